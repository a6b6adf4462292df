"""Server-side batching for the local server, with TF Serving's semantics.

Why: TF Serving's throughput on small requests comes from ``--enable_batching``: concurrent
requests for the same model are merged into one ``Session::Run``. A stand-in server that runs each
request alone reports latency and load figures for a server that behaves differently from the
real one, and cannot be used to choose batching parameters. This module reproduces what
``tensorflow_model_server`` does (sources read at TF Serving 2.17: ``batching/batching_session.cc``,
``batching/batching_util.cc``, ``servables/tensorflow/bundle_factory_util.cc``; TensorFlow's
``core/kernels/batching_util/shared_batch_scheduler.h`` and ``input_split_metadata.cc``):

* One ``SharedBatchScheduler`` per server: ``num_batch_threads`` threads shared by every model,
  round-robin over the queues. One queue per loaded version and tensor signature (the set of fed
  and fetched tensor names), so different models/versions/signatures never share a batch.
* A queue is a deque of batches; the last one is open. A task that does not fit the open batch
  closes it and starts a new one. A batch runs when it is full (``max_batch_size``, or
  ``max_execution_batch_size`` with ``enable_large_batch_splitting``) or when its first task has
  waited ``batch_timeout_micros`` and a thread is free.
* ``max_enqueued_batches`` bounds the queue (the batches being run do not count): past it a request
  is refused at once with UNAVAILABLE (HTTP 503) "The batch scheduling queue to which this task
  was submitted is full; ..." - TF Serving's code and wording. A request whose gRPC deadline has
  passed while it waited gets RESOURCE_EXHAUSTED (HTTP 429) "Run() timeout exceeded while waiting
  in batching queue", as in ``BatchingSession::ProcessBatch``.
* A request larger than ``max_batch_size`` is refused with INVALID_ARGUMENT "Task size N is larger
  than maximum input batch size M"; with ``enable_large_batch_splitting`` a request larger than
  the room left in the open batch is split across batches and its answers concatenated.
* Inputs are concatenated along dimension 0 and padded up to the next ``allowed_batch_sizes``
  entry with copies of the first row of the last task; the padding rows are sliced off the
  outputs. With ``pad_variable_length_inputs`` each task's tensors are padded to the batch's
  largest shape with their own first element (outputs keep the padded shape, as in TF Serving).

One deliberate difference: without ``pad_variable_length_inputs``, TF Serving merges requests
whose non-batch dimensions differ into one batch and then fails the whole batch with
FAILED_PRECONDITION ("Tensors with name ... have different shapes and padding is turned off"),
so innocent requests fail depending on timing. Here such a request starts a new batch instead
(it is not merged); a warning says that TF Serving would have failed it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

# QueueOptions / Options defaults of shared_batch_scheduler.h, used for fields a
# batching_parameters.txt leaves out (and for --enable_batching without a file).
TF_DEFAULT_MAX_BATCH_SIZE = 1000
TF_DEFAULT_BATCH_TIMEOUT_MICROS = 0
TF_DEFAULT_MAX_ENQUEUED_BATCHES = 10

QUEUE_FULL = "The batch scheduling queue to which this task was submitted is full"
QUEUE_TIMEOUT = "Run() timeout exceeded while waiting in batching queue"
NO_FLAG_MESSAGE = ("server_options.batching_parameters_file is set without setting "
                   "server_options.enable_batching to true.")

RunFn = Callable[[list[str], dict[str, Any]], Sequence[Any]]


class BatchingError(Exception):
    """A batching failure with a gRPC status code name (used when no server error type is given)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True)
class BatchingOptions:
    """``tensorflow.serving.BatchingParameters`` with TF Serving's defaults filled in."""

    max_batch_size: int = TF_DEFAULT_MAX_BATCH_SIZE
    batch_timeout_micros: int = TF_DEFAULT_BATCH_TIMEOUT_MICROS
    max_enqueued_batches: int = TF_DEFAULT_MAX_ENQUEUED_BATCHES
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int = 0  # 0: max_batch_size (GetQueueOptions)
    thread_pool_name: str = "batch_threads"

    @property
    def execution_limit(self) -> int:
        """Largest batch the scheduler forms (``max_execution_batch_size()`` of the queue)."""
        if self.enable_large_batch_splitting and self.max_execution_batch_size > 0:
            return self.max_execution_batch_size
        return self.max_batch_size

    def padded_size(self, size: int) -> int:
        """``RoundToLowestAllowedBatchSize``: the smallest allowed size >= size (size itself when
        none is, or when no sizes are configured)."""
        for allowed in self.allowed_batch_sizes:
            if allowed >= size:
                return allowed
        return size

    def describe(self) -> str:
        parts = [f"max_batch_size={self.max_batch_size}",
                 f"batch_timeout_micros={self.batch_timeout_micros}",
                 f"max_enqueued_batches={self.max_enqueued_batches}",
                 f"num_batch_threads={self.num_batch_threads}",
                 f"allowed_batch_sizes={list(self.allowed_batch_sizes)}",
                 f"pad_variable_length_inputs={str(self.pad_variable_length_inputs).lower()}"]
        if self.enable_large_batch_splitting:
            parts.append(f"enable_large_batch_splitting=true max_execution_batch_size={self.execution_limit}")
        return " ".join(parts)

    @classmethod
    def from_proto(cls, msg: Any, source: str = "batching parameters") -> BatchingOptions:
        """A parsed BatchingParameters message -> options, checked as TF Serving checks them when
        it wraps a session (a file it would refuse is refused here, naming ``source``)."""
        from builder.core.errors import ConfigError

        def value(name: str, default: Any) -> Any:
            return getattr(msg, name).value if msg.HasField(name) else default

        splitting = bool(value("enable_large_batch_splitting", False))
        opts = cls(
            max_batch_size=int(value("max_batch_size", TF_DEFAULT_MAX_BATCH_SIZE)),
            batch_timeout_micros=int(value("batch_timeout_micros", TF_DEFAULT_BATCH_TIMEOUT_MICROS)),
            max_enqueued_batches=int(value("max_enqueued_batches", TF_DEFAULT_MAX_ENQUEUED_BATCHES)),
            num_batch_threads=int(value("num_batch_threads", os.cpu_count() or 1)),
            allowed_batch_sizes=tuple(int(b) for b in msg.allowed_batch_sizes),
            pad_variable_length_inputs=bool(msg.pad_variable_length_inputs),
            enable_large_batch_splitting=splitting,
            max_execution_batch_size=int(value("max_execution_batch_size", 0)) if splitting else 0,
            thread_pool_name=str(value("thread_pool_name", "batch_threads")) or "batch_threads",
        )
        problem = opts.problem()
        if problem:
            raise ConfigError(f"{source}: {problem}")
        if not splitting and opts.max_enqueued_batches == 0:  # AddQueue rewrites 0 to 1
            opts = replace(opts, max_enqueued_batches=1)
        return opts

    def problem(self) -> str:
        """What TF Serving would refuse in these options (empty if nothing)."""
        if self.num_batch_threads < 1:
            return f"num_batch_threads must be positive; was {self.num_batch_threads}: set it to >= 1"
        if self.max_batch_size < 1:
            return f"input_batch_size_limit must be positive; was {self.max_batch_size}: fix max_batch_size"
        if self.batch_timeout_micros < 0:
            return (f"batch_timeout_micros must be non-negative; was {self.batch_timeout_micros}: "
                    "use 0 or more")
        if self.max_enqueued_batches < 0 or (self.enable_large_batch_splitting and self.max_enqueued_batches == 0):
            return f"max_enqueued_batches must be positive; was {self.max_enqueued_batches}: use 1 or more"
        if self.enable_large_batch_splitting and self.max_batch_size < self.execution_limit:
            return ("When enable_large_batch_splitting is true, input_batch_size_limit must be greater "
                    f"than or equal to max_execution_batch_size ({self.max_batch_size} < "
                    f"{self.execution_limit}): raise max_batch_size or lower max_execution_batch_size")
        if self.allowed_batch_sizes and self.allowed_batch_sizes[-1] != self.max_batch_size:
            return ("Last entry in allowed_batch_sizes must match max_batch_size; last entry was "
                    f"{self.allowed_batch_sizes[-1]}; expected {self.max_batch_size}")
        return ""


def read_options(path: str | os.PathLike) -> BatchingOptions:
    """Read and check a ``--batching_parameters_file``; errors name the file (exit 2)."""
    from builder.config.companions import parse_batching_parameters
    from builder.core.errors import InputError

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--batching_parameters_file {path}: cannot read ({e})") from None
    return BatchingOptions.from_proto(parse_batching_parameters(text, str(path)), str(path))


def from_flags(enable_batching: bool, batching_parameters_file: str | os.PathLike, log: logging.Logger,
               error_type: Callable[[str, str], Exception] = BatchingError) -> SharedBatchScheduler | None:
    """The scheduler ``tensorflow_model_server`` would build from ``--enable_batching`` and
    ``--batching_parameters_file`` (None when batching is off).

    TF Serving refuses to start when the file is given without ``--enable_batching``; the local
    server keeps its earlier leniency there (the file is checked, batching stays off) and logs
    TF Serving's message so the difference is visible."""
    if not enable_batching:
        if batching_parameters_file:
            read_options(batching_parameters_file)
            log.warning("--batching_parameters_file %s without --enable_batching: requests are not "
                        "batched (tensorflow_model_server refuses to start: %s)",
                        batching_parameters_file, NO_FLAG_MESSAGE)
        return None
    if batching_parameters_file:
        opts = read_options(batching_parameters_file)
    else:
        opts = BatchingOptions(thread_pool_name="model_server_batch_threads")
    log.info("Wrapping session to perform batch processing: %s", opts.describe())
    return SharedBatchScheduler(opts, error_type=error_type, log=log)


# ---------------------------------------------------------------------------------------------
# Tasks and batches


class _Request:
    """One caller's Run(): split into one or more tasks; done when every task is."""

    __slots__ = ("event", "parts", "remaining", "error", "lock")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.parts: list[dict[str, Any] | None] = []
        self.remaining = 0
        self.error: BaseException | None = None
        self.lock = threading.Lock()

    def finish(self, index: int, outputs: dict[str, Any] | None, error: BaseException | None) -> None:
        with self.lock:
            if error is not None and self.error is None:
                self.error = error
            self.parts[index] = outputs
            self.remaining -= 1
            if self.remaining == 0:
                self.event.set()


@dataclass
class _Task:
    request: _Request
    index: int
    inputs: dict[str, Any]
    size: int
    shape_key: tuple
    enqueue_time: float
    deadline: float | None


@dataclass
class _Batch:
    tasks: list[_Task] = field(default_factory=list)
    size: int = 0
    shape_key: tuple | None = None
    start: float = 0.0  # when the first task was added

    def add(self, task: _Task, now: float) -> None:
        if not self.tasks:
            self.start = now
            self.shape_key = task.shape_key
        self.tasks.append(task)
        self.size += task.size


@dataclass
class BatchStats:
    """What the scheduler did: batches run, requests in them, padding added."""

    batches: int = 0
    tasks: int = 0
    rows: int = 0
    padded_rows: int = 0
    refused_full: int = 0
    refused_timeout: int = 0
    run_seconds: float = 0.0  # inside Session.run
    queue_seconds: float = 0.0  # from each batch's first task to its run
    sizes: collections.Counter = field(default_factory=collections.Counter)  # padded size -> count

    @property
    def mean_batch_size(self) -> float:
        return self.rows / self.batches if self.batches else 0.0

    def as_dict(self) -> dict:
        return {"batches": self.batches, "tasks": self.tasks, "rows": self.rows,
                "padded_rows": self.padded_rows, "refused_full": self.refused_full,
                "refused_timeout": self.refused_timeout, "mean_batch_size": round(self.mean_batch_size, 3),
                "mean_run_ms": round(1000 * self.run_seconds / self.batches, 2) if self.batches else 0.0,
                "mean_queue_ms": round(1000 * self.queue_seconds / self.batches, 2) if self.batches else 0.0,
                "padded_sizes": {str(k): v for k, v in sorted(self.sizes.items())}}


def _shape_key(inputs: dict[str, Any], pad: bool) -> tuple:
    """What must match for two tasks to share a batch: dtypes and non-batch dims (ranks only when
    variable-length inputs are padded)."""
    if pad:
        return tuple((n, a.ndim, a.dtype.str) for n, a in sorted(inputs.items()))
    return tuple((n, a.shape[1:], a.dtype.str) for n, a in sorted(inputs.items()))


def split_sizes(size: int, open_batch_remaining: int, limit: int) -> list[int]:
    """``InputSplitMetadata``: how a task of ``size`` rows is cut when the open batch has
    ``open_batch_remaining`` free rows and batches hold at most ``limit``."""
    from_open = size + limit - open_batch_remaining if open_batch_remaining > 0 else size
    n = (from_open + limit - 1) // limit
    sizes = [limit] * n
    sizes[0] = min(size, limit) if open_batch_remaining == 0 else min(open_batch_remaining, size)
    if size <= open_batch_remaining:
        sizes[-1] = size
    else:
        tail = from_open % limit
        sizes[-1] = tail or limit
    return sizes


# ---------------------------------------------------------------------------------------------
# One queue


class _Queue:
    """The batches of one (version, tensor signature): a deque whose last batch is open."""

    def __init__(self, opts: BatchingOptions, feed_names: tuple[str, ...], fetch_names: tuple[str, ...],
                 run_fn: RunFn, scheduler: SharedBatchScheduler) -> None:
        self.opts = opts
        self.feed_names = feed_names
        self.fetch_names = fetch_names
        self.run_fn = run_fn
        self.scheduler = scheduler
        self.batches: collections.deque[_Batch] = collections.deque([_Batch()])
        self.in_flight = 0

    # -- called with the scheduler lock held ------------------------------------------------------
    def schedule(self, tasks_of: Callable[[list[int]], list[_Task]], size: int, shape_key: tuple,
                 now: float) -> None:
        """Validate capacity as ``ValidateBatchTaskQueueCapacity`` does, then place the task (or
        its pieces) as ``ScheduleWithoutOrEagerSplitImpl`` does."""
        err = self.scheduler.error_type
        opts, limit = self.opts, self.opts.execution_limit
        if size > opts.max_batch_size:
            raise err("INVALID_ARGUMENT",
                      f"Task size {size} is larger than maximum input batch size {opts.max_batch_size}")
        open_batch = self.batches[-1]
        fits_shape = not open_batch.tasks or open_batch.shape_key == shape_key
        if opts.enable_large_batch_splitting:
            room = self.capacity() - (0 if fits_shape else limit - open_batch.size)
            if size > room:
                self.scheduler.stats.refused_full += 1
                raise err("UNAVAILABLE",
                          f"{QUEUE_FULL}; task size is {size} but scheduling capacity is only {room} "
                          f"(num_enqueued_batches={len(self.batches)}, max_enqueued_batches="
                          f"{opts.max_enqueued_batches}, open_batch_size={open_batch.size}, "
                          f"max_execution_batch_size={limit})")
        elif (open_batch.size + size > opts.max_batch_size or not fits_shape) \
                and len(self.batches) >= opts.max_enqueued_batches:
            self.scheduler.stats.refused_full += 1
            raise err("UNAVAILABLE", f"{QUEUE_FULL}; currently {len(self.batches)} batches enqueued and "
                                     f"max_enqueued_batches is {opts.max_enqueued_batches}")
        if not fits_shape:
            self.scheduler.warn_shapes(self.feed_names)
            self._start_new_batch()
        remaining = limit - self.batches[-1].size
        if opts.enable_large_batch_splitting and size > remaining:
            pieces = split_sizes(size, remaining, limit)
        else:
            pieces = [size]
        for task in tasks_of(pieces):
            if self.batches[-1].size + task.size > limit:
                self._start_new_batch()
            self.batches[-1].add(task, now)

    def capacity(self) -> int:
        """``SchedulingCapacityInternal``: rows that can still be accepted."""
        limit = self.opts.execution_limit
        return (self.opts.max_enqueued_batches - len(self.batches)) * limit + limit - self.batches[-1].size

    def _start_new_batch(self) -> None:
        self.batches.append(_Batch())

    def next_batch(self, now: float, closing: bool) -> tuple[_Batch | None, float | None]:
        """``ScheduleBatch``: a closed batch to run (or None) and, if none, when the open batch
        becomes runnable by timeout (None: not until a task arrives)."""
        open_batch = self.batches[-1]
        if len(self.batches) == 1 and open_batch.tasks:
            due = open_batch.start + self.opts.batch_timeout_micros / 1e6
            if closing or open_batch.size >= self.opts.execution_limit or now >= due:
                self._start_new_batch()
            else:
                return None, due
        if len(self.batches) >= 2:
            self.in_flight += 1
            return self.batches.popleft(), None
        return None, None

    # -- called from a batch thread without the lock ---------------------------------------------
    def process(self, batch: _Batch) -> None:
        """``BatchingSession::ProcessBatch``: merge, run once, split, answer every task."""
        error: BaseException | None = None
        results: list[dict[str, Any] | None] = [None] * len(batch.tasks)
        try:
            now = time.monotonic()
            live = [t for t in batch.tasks if t.deadline is None or t.deadline > now]
            if not live:
                self.scheduler.count_timeouts(len(batch.tasks))
                raise self.scheduler.error_type("RESOURCE_EXHAUSTED", QUEUE_TIMEOUT)
            feed, padding = self._merge(batch)
            t0 = time.perf_counter()
            values = self.run_fn(list(self.fetch_names), feed)
            ran = time.perf_counter() - t0
            results = self._split(batch, dict(zip(self.fetch_names, values, strict=True)), padding)
            self.scheduler.record(batch, padding, ran, now - batch.start)
        except BaseException as e:  # noqa: BLE001 - every waiting caller must get the failure
            error = e
        for i, task in enumerate(batch.tasks):
            task.request.finish(task.index, results[i], error)

    def _merge(self, batch: _Batch) -> tuple[dict[str, Any], int]:
        import numpy as np

        padding = self.opts.padded_size(batch.size) - batch.size
        max_dims = self._max_dims(batch) if self.opts.pad_variable_length_inputs else {}
        feed = {}
        for name in self.feed_names:
            parts = [t.inputs[name] for t in batch.tasks]
            if max_dims:
                parts = [_pad_to(p, max_dims[name], self.scheduler.error_type) for p in parts]
            if padding > 0:
                row = parts[-1][:1]
                parts.append(np.repeat(row, padding, axis=0) if row.shape[0] else row)
            feed[name] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        return feed, padding

    def _max_dims(self, batch: _Batch) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for name in self.feed_names:
            shapes = [t.inputs[name].shape for t in batch.tasks]
            out[name] = [max(s[d] for s in shapes) for d in range(len(shapes[0]))]
        return out

    def _split(self, batch: _Batch, outputs: dict[str, Any], padding: int) -> list[dict[str, Any]]:
        err = self.scheduler.error_type
        results: list[dict[str, Any]] = [{} for _ in batch.tasks]
        for name, arr in outputs.items():
            if getattr(arr, "ndim", 0) == 0:
                raise err("FAILED_PRECONDITION", "Batched output tensor has 0 dimensions")
            if arr.shape[0] != batch.size + padding:
                raise err("FAILED_PRECONDITION",
                          "Batched output tensor's 0th dimension does not equal the sum of the 0th "
                          "dimension sizes of the input tensors")
            start = 0
            for i, task in enumerate(batch.tasks):
                results[i][name] = arr[start:start + task.size]
                start += task.size
        return results


def _pad_to(arr: Any, dims: list[int], error_type: Callable[[str, str], Exception]) -> Any:
    """``AddPadding``: pad every dimension but the 0th up to ``dims`` with the tensor's first
    element."""
    import numpy as np

    target = (arr.shape[0], *dims[1:])
    if tuple(arr.shape) == target:
        return arr
    if not 1 <= arr.ndim <= 6:
        raise error_type("INVALID_ARGUMENT", "Only tensors with rank from 1 to 6 can be padded.")
    if arr.size < 1:
        raise error_type("INVALID_ARGUMENT", "Got empty tensor in batch of non-empty tensors.")
    out = np.empty(target, dtype=arr.dtype)
    out[...] = arr.reshape(-1)[0]
    out[tuple(slice(0, s) for s in arr.shape)] = arr
    return out


# ---------------------------------------------------------------------------------------------
# The scheduler


class SharedBatchScheduler:
    """Batch threads shared by every queue of a server, as TF's ``SharedBatchScheduler``.

    ``run`` is what a servable calls instead of ``session.run``: it blocks until the batch holding
    the request has run and returns the request's own slice of each fetched tensor."""

    def __init__(self, options: BatchingOptions, *, error_type: Callable[[str, str], Exception] = BatchingError,
                 log: logging.Logger | None = None) -> None:
        problem = options.problem()
        if problem:
            raise ValueError(problem)
        self.options = options
        self.error_type = error_type
        self.log = log or logging.getLogger(__name__)
        self.stats = BatchStats()
        self._cv = threading.Condition()
        self._queues: weakref.WeakKeyDictionary[Any, dict[tuple, _Queue]] = weakref.WeakKeyDictionary()
        self._rr = 0
        self._stopping = False
        self._warned_shapes = False
        self._threads = [threading.Thread(target=self._thread_main, name=f"{options.thread_pool_name}_{i}",
                                          daemon=True) for i in range(options.num_batch_threads)]
        for t in self._threads:
            t.start()

    # -- callers -----------------------------------------------------------------------------------
    def run(self, owner: Any, feed: dict[str, Any], fetch: Sequence[str], run_fn: RunFn,
            deadline: float | None = None) -> list[Any]:
        """Batch one Run(): ``feed`` maps tensor names to arrays sharing dimension 0, ``fetch`` the
        tensor names wanted, ``owner`` the loaded version (queues die with it), ``run_fn(fetches,
        feed)`` runs the merged batch, ``deadline`` (time.monotonic) bounds the wait in queue."""
        if deadline is None:
            deadline = _thread_deadline()
        size = self._input_size(feed)
        request = _Request()
        pad = self.options.pad_variable_length_inputs
        shape_key = _shape_key(feed, pad)
        now = time.monotonic()

        def tasks_of(pieces: list[int]) -> list[_Task]:
            request.parts = [None] * len(pieces)
            request.remaining = len(pieces)
            tasks, start = [], 0
            for i, n in enumerate(pieces):
                inputs = feed if len(pieces) == 1 else {k: v[start:start + n] for k, v in feed.items()}
                tasks.append(_Task(request, i, inputs, n, shape_key, now, deadline))
                start += n
            return tasks

        with self._cv:
            if self._stopping:
                raise self.error_type("UNAVAILABLE", "the batch scheduler is shutting down")
            queue = self._queue(owner, tuple(sorted(feed)), tuple(sorted(set(fetch))), run_fn)
            queue.schedule(tasks_of, size, shape_key, now)
            self._cv.notify_all()
        request.event.wait()
        if request.error is not None:
            raise request.error
        return self._answer(request, fetch)

    def _answer(self, request: _Request, fetch: Sequence[str]) -> list[Any]:
        import numpy as np

        parts = request.parts
        if len(parts) == 1:
            merged = parts[0]
        else:
            try:
                merged = {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}
            except ValueError as e:
                raise self.error_type("INVALID_ARGUMENT", f"cannot concatenate split outputs: {e}") from None
        return [merged[name] for name in fetch]

    def _input_size(self, feed: dict[str, Any]) -> int:
        """``ComputeTensorBatchSize``: every input has a 0th dimension, all the same size."""
        if not feed:
            raise self.error_type("INVALID_ARGUMENT", "Batching Run() must have at least one input tensor")
        sizes = set()
        for arr in feed.values():
            if arr.ndim == 0:
                raise self.error_type("INVALID_ARGUMENT",
                                      "Batching Run() input tensors must have at least one dimension")
            sizes.add(int(arr.shape[0]))
        if len(sizes) > 1:
            raise self.error_type("INVALID_ARGUMENT",
                                  "Batching Run() input tensors must have equal 0th-dimension size")
        return sizes.pop()

    def _queue(self, owner: Any, feed_names: tuple[str, ...], fetch_names: tuple[str, ...],
               run_fn: RunFn) -> _Queue:
        queues = self._queues.get(owner)
        if queues is None:
            queues = self._queues[owner] = {}
        key = (feed_names, fetch_names)
        q = queues.get(key)
        if q is None:
            q = queues[key] = _Queue(self.options, feed_names, fetch_names, run_fn, self)
        return q

    def queue_lengths(self) -> list[int]:
        """Tasks waiting in each queue (for tests and progress displays)."""
        with self._cv:
            return [sum(len(b.tasks) for b in q.batches) for qs in self._queues.values() for q in qs.values()]

    def warn_shapes(self, feed_names: tuple[str, ...]) -> None:
        if not self._warned_shapes:
            self._warned_shapes = True
            self.log.warning(
                "requests with different non-batch shapes for inputs %s were put in separate batches; "
                "tensorflow_model_server would merge them and fail the batch with FAILED_PRECONDITION "
                "(set pad_variable_length_inputs: true, or send equal shapes)", ", ".join(feed_names))

    def count_timeouts(self, n: int) -> None:
        with self._cv:
            self.stats.refused_timeout += n

    def take_stats(self) -> BatchStats:
        """The statistics so far, and start counting afresh."""
        with self._cv:
            stats, self.stats = self.stats, BatchStats()
        return stats

    def record(self, batch: _Batch, padding: int, run_seconds: float = 0.0, wait_seconds: float = 0.0) -> None:
        with self._cv:
            s = self.stats
            s.run_seconds += run_seconds
            s.queue_seconds += wait_seconds
            s.batches += 1
            s.tasks += len(batch.tasks)
            s.rows += batch.size
            s.padded_rows += padding
            s.sizes[batch.size + padding] += 1

    # -- batch threads ------------------------------------------------------------------------------
    def _thread_main(self) -> None:
        while True:
            with self._cv:
                while True:
                    queue, batch, wait = self._next_work(time.monotonic())
                    if batch is not None:
                        break
                    if self._stopping and wait is None:
                        return
                    self._cv.wait(timeout=wait)
            try:
                queue.process(batch)
            finally:
                with self._cv:
                    queue.in_flight -= 1
                    self._cv.notify_all()

    def _next_work(self, now: float) -> tuple[Any, Any, float | None]:
        """Round-robin over the queues (``GetNextWorkItem_Locked``): the first runnable batch, or
        how long to sleep until an open batch times out."""
        queues = [q for qs in list(self._queues.values()) for q in qs.values()]
        wake: float | None = None
        for i in range(len(queues)):
            q = queues[(self._rr + i) % len(queues)]
            batch, due = q.next_batch(now, self._stopping)
            if batch is not None:
                self._rr = (self._rr + i + 1) % len(queues)
                return q, batch, None
            if due is not None:
                wake = due if wake is None else min(wake, due)
        return None, None, None if wake is None else max(wake - now, 0.0)

    def stop(self, timeout: float = 10.0) -> None:
        """Run what is queued, then end the threads (a stopping server answers what it accepted)."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        end = time.monotonic() + timeout
        for t in self._threads:
            t.join(timeout=max(end - time.monotonic(), 0.0))

    def reconfigure(self, options: BatchingOptions) -> None:
        """Drain, then continue with new options, fresh queues and fresh statistics: what a server
        restarted with another batching_parameters.txt would do, without reloading the models
        (``tune`` measures many parameter sets on one loaded server this way)."""
        problem = options.problem()
        if problem:
            raise ValueError(problem)
        self.stop()
        with self._cv:
            self.options = options
            self._queues = weakref.WeakKeyDictionary()
            self.stats = BatchStats()
            self._rr = 0
            self._stopping = False
            self._threads = [threading.Thread(target=self._thread_main, name=f"{options.thread_pool_name}_{i}",
                                              daemon=True) for i in range(options.num_batch_threads)]
        for t in self._threads:
            t.start()


# ---------------------------------------------------------------------------------------------
# gRPC deadlines reach the scheduler through the request thread


_local = threading.local()


@contextlib.contextmanager
def grpc_deadline(context: Any) -> Iterator[None]:
    """Within this block, batched runs on this thread carry the gRPC call's deadline
    (``context.time_remaining()``), as TF Serving passes it in ``RunOptions.timeout_in_ms``: a
    request still queued when it passes is refused with RESOURCE_EXHAUSTED. The previous value is
    restored on exit, so a model load that later runs on the same worker thread has no deadline."""
    remaining = context.time_remaining() if context is not None else None
    previous = getattr(_local, "deadline", None)
    _local.deadline = None if remaining is None or not math.isfinite(remaining) else time.monotonic() + remaining
    try:
        yield
    finally:
        _local.deadline = previous


def _thread_deadline() -> float | None:
    return getattr(_local, "deadline", None)

"""Server-side batching (builder.serve.batching) on tiny real TF models: merging, padding to
allowed sizes, timeouts, back-pressure, splitting, mixed shapes, and answers identical to running
each request alone - through the scheduler directly and through the local server (gRPC, REST)."""

from __future__ import annotations

import concurrent.futures as cf
import http.client
import json
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from builder.config import companions
from builder.core.errors import ConfigError
from builder.serve import batching
from builder.serve.batching import BatchingError, BatchingOptions, SharedBatchScheduler, split_sizes
from builder.serve.local import LocalServer
from integration_tests.fixture_models import build_toy_version, sample_inputs, toy_reference, write_models_config

# ---------------------------------------------------------------------------------------------
# tiny real models


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """toy/1 (x[-1,4] -> y, z; warmup records of batch 1 and 4), seq/1 (variable length) and
    gate/1 (a graph that blocks on a FIFOQueue until released: deterministic back-pressure)."""
    root = tmp_path_factory.mktemp("batching-repo")
    build_toy_version(root, "toy", 1)
    _write_seq_model(root / "seq" / "1")
    _write_gate_model(root / "gate" / "1")
    return root


def _save(path: Path, graph, signatures: dict) -> None:
    import tensorflow as tf

    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        b = tf.compat.v1.saved_model.Builder(str(path))
        b.add_meta_graph_and_variables(sess, ["serve"], signature_def_map=signatures)
        b.save()


def _sig(inputs: dict, outputs: dict):
    import tensorflow as tf

    info = tf.compat.v1.saved_model.utils.build_tensor_info
    return tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
        {k: info(v) for k, v in inputs.items()}, {k: info(v) for k, v in outputs.items()},
        tf.compat.v1.saved_model.signature_constants.PREDICT_METHOD_NAME)


def _write_seq_model(path: Path) -> None:
    """tokens[-1,-1] int32 -> total = row sums [-1], echo = tokens [-1,-1]."""
    import tensorflow as tf

    g = tf.Graph()
    with g.as_default():
        tokens = tf.compat.v1.placeholder(tf.int32, [None, None], name="tokens")
        total = tf.reduce_sum(tokens, axis=1, name="total")
        echo = tf.identity(tokens, name="echo")
        signatures = {"serving_default": _sig({"tokens": tokens}, {"total": total, "echo": echo})}
    _save(path, g, signatures)


def _write_gate_model(path: Path) -> None:
    """serving_default: x[-1,4] -> y = 2x, but every run first takes a token from a FIFOQueue;
    release: n[-1] float -> enqueues n tokens. A batch blocks until the test releases it."""
    import tensorflow as tf

    g = tf.Graph()
    with g.as_default():
        q = tf.queue.FIFOQueue(1000, [tf.float32], shapes=[[]], shared_name="gate", name="gate")
        x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="x")
        token = q.dequeue()
        y = tf.identity(x * 2.0 + token * 0.0, name="y")
        n = tf.compat.v1.placeholder(tf.float32, [None], name="n")
        with tf.control_dependencies([q.enqueue_many([n])]):
            released = tf.identity(n, name="released")
        signatures = {"serving_default": _sig({"x": x}, {"y": y}),
                      "release": _sig({"n": n}, {"released": released})}
    _save(path, g, signatures)


class Loaded:
    """One SavedModel in its own session, as the server loads it; ``runs`` records the batch
    shapes the session actually saw."""

    def __init__(self, path: Path) -> None:
        import tensorflow as tf

        self.graph = tf.Graph()
        self.sess = tf.compat.v1.Session(graph=self.graph)
        with self.graph.as_default():
            meta = tf.compat.v1.saved_model.loader.load(self.sess, ["serve"], str(path))
        self.sig = meta.signature_def
        self.runs: list[dict[str, tuple]] = []
        self.lock = threading.Lock()

    def tensor(self, kind: str, alias: str, key: str = "serving_default") -> str:
        return getattr(self.sig[key], kind)[alias].name

    def run(self, fetches: list[str], feed: dict) -> list:
        with self.lock:
            self.runs.append({k: v.shape for k, v in feed.items()})
        return self.sess.run(fetches, feed_dict=feed)


@pytest.fixture(scope="module")
def toy(repo) -> Loaded:
    return Loaded(repo / "toy" / "1")


@pytest.fixture(scope="module")
def seq(repo) -> Loaded:
    return Loaded(repo / "seq" / "1")


def scheduler(**kw) -> SharedBatchScheduler:
    kw.setdefault("num_batch_threads", 1)
    return SharedBatchScheduler(BatchingOptions(**kw))


def concurrently(fn, args: list) -> list:
    with cf.ThreadPoolExecutor(len(args)) as pool:
        return list(pool.map(fn, args))


def predict_toy(s: SharedBatchScheduler, toy: Loaded, owner=None):
    x_name, y_name, z_name = toy.tensor("inputs", "x"), toy.tensor("outputs", "y"), toy.tensor("outputs", "z")
    owner = owner or toy

    def call(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        y, z = s.run(owner, {x_name: x}, [y_name, z_name], toy.run)
        return y, z

    return call


def alone(toy: Loaded, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, z = toy.sess.run([toy.tensor("outputs", "y"), toy.tensor("outputs", "z")],
                        feed_dict={toy.tensor("inputs", "x"): x})
    return y, z


# ---------------------------------------------------------------------------------------------
# the scheduler on a real session


def test_concurrent_requests_merge_into_one_batch_with_identical_answers(toy):
    s = scheduler(max_batch_size=8, batch_timeout_micros=30_000_000)  # only a full batch runs
    toy.runs.clear()
    xs = [sample_inputs(1, seed=i) for i in range(8)]
    try:
        got = concurrently(predict_toy(s, toy), xs)
    finally:
        s.stop()
    assert toy.runs == [{toy.tensor("inputs", "x"): (8, 4)}]  # one Session.run for all eight
    assert s.stats.batches == 1 and s.stats.tasks == 8 and s.stats.padded_rows == 0
    for x, (y, z) in zip(xs, got):
        ya, za = alone(toy, x)
        np.testing.assert_array_equal(y, ya)  # bit-identical to the unbatched answer
        np.testing.assert_array_equal(z, za)
        np.testing.assert_allclose(y, toy_reference(x, 1)["y"], atol=1e-5)


def test_batch_is_padded_to_the_next_allowed_size_and_padding_sliced_off(toy):
    s = scheduler(max_batch_size=8, batch_timeout_micros=300_000, allowed_batch_sizes=(2, 4, 8))
    toy.runs.clear()
    xs = [sample_inputs(n, seed=n) for n in (1, 2)]  # 3 rows -> padded to 4
    try:
        got = concurrently(predict_toy(s, toy), xs)
    finally:
        s.stop()
    assert toy.runs == [{toy.tensor("inputs", "x"): (4, 4)}]
    assert s.stats.sizes == {4: 1} and s.stats.rows == 3 and s.stats.padded_rows == 1
    for x, (y, z) in zip(xs, got):
        assert y.shape == (len(x), 3) and z.shape == (len(x), 1)
        np.testing.assert_array_equal(y, alone(toy, x)[0])


def test_timeout_runs_a_partial_batch_after_batch_timeout_micros(toy):
    s = scheduler(max_batch_size=8, batch_timeout_micros=150_000)
    x = sample_inputs(1)
    try:
        t0 = time.monotonic()
        y, _ = predict_toy(s, toy)(x)
        waited = time.monotonic() - t0
        s2 = scheduler(max_batch_size=8, batch_timeout_micros=0)
        t0 = time.monotonic()
        predict_toy(s2, toy)(x)
        immediate = time.monotonic() - t0
        s2.stop()
    finally:
        s.stop()
    assert waited >= 0.15  # a lone request waits for the timeout, then runs as a batch of 1
    assert immediate < waited
    assert s.stats.sizes == {1: 1}
    np.testing.assert_array_equal(y, alone(toy, x)[0])


def test_request_larger_than_max_batch_size_is_refused_like_tf_serving(toy):
    s = scheduler(max_batch_size=4)
    try:
        with pytest.raises(BatchingError) as e:
            predict_toy(s, toy)(sample_inputs(5))
    finally:
        s.stop()
    assert e.value.code == "INVALID_ARGUMENT"
    assert e.value.message == "Task size 5 is larger than maximum input batch size 4"


def test_large_batch_splitting_spreads_a_request_over_batches(toy):
    s = scheduler(max_batch_size=10, enable_large_batch_splitting=True, max_execution_batch_size=4,
                  batch_timeout_micros=0)
    toy.runs.clear()
    x = sample_inputs(10)
    try:
        y, z = predict_toy(s, toy)(x)
    finally:
        s.stop()
    assert sorted(r[toy.tensor("inputs", "x")][0] for r in toy.runs) == [2, 4, 4]
    np.testing.assert_array_equal(y, alone(toy, x)[0])
    np.testing.assert_array_equal(z, alone(toy, x)[1])


@pytest.mark.parametrize(("size", "room", "limit", "want"), [
    (10, 0, 4, [4, 4, 2]), (10, 3, 4, [3, 4, 3]), (5, 2, 4, [2, 3]), (8, 4, 4, [4, 4]), (2, 4, 4, [2]),
])
def test_split_sizes_follow_input_split_metadata(size, room, limit, want):
    assert split_sizes(size, room, limit) == want


def test_queue_full_answers_unavailable_with_tf_servings_wording(toy):
    """One batch thread held inside Session.run; max_enqueued_batches=1 leaves room for one open
    batch: the request that needs a second one is refused at once, the others all finish."""
    gate = threading.Event()
    x_name, y_name = toy.tensor("inputs", "x"), toy.tensor("outputs", "y")

    def slow_run(fetches, feed):
        gate.wait(30)
        return toy.run(fetches, feed)

    s = scheduler(max_batch_size=2, max_enqueued_batches=1, batch_timeout_micros=0)
    call = lambda x: s.run(toy, {x_name: x}, [y_name], slow_run)[0]  # noqa: E731
    pool = cf.ThreadPoolExecutor(4)
    try:
        first = pool.submit(call, sample_inputs(1, 1))
        _wait_for(lambda: s.queue_lengths() == [0])  # taken by the (blocked) batch thread
        queued = [pool.submit(call, sample_inputs(1, i)) for i in (2, 3)]
        _wait_for(lambda: s.queue_lengths() == [2])  # the open batch is full
        with pytest.raises(BatchingError) as e:
            call(sample_inputs(1, 4))
        gate.set()
        answers = [f.result(10) for f in (first, *queued)]
    finally:
        gate.set()
        pool.shutdown()
        s.stop()
    assert e.value.code == "UNAVAILABLE"
    assert e.value.message == ("The batch scheduling queue to which this task was submitted is full; "
                               "currently 1 batches enqueued and max_enqueued_batches is 1")
    assert s.stats.refused_full == 1 and s.stats.tasks == 3
    for seed, y in zip((1, 2, 3), answers):
        np.testing.assert_array_equal(y, alone(toy, sample_inputs(1, seed))[0])


def test_request_past_its_deadline_in_queue_gets_resource_exhausted(toy):
    s = scheduler(max_batch_size=4, batch_timeout_micros=100_000)
    x_name, y_name = toy.tensor("inputs", "x"), toy.tensor("outputs", "y")
    try:
        with pytest.raises(BatchingError) as e:
            s.run(toy, {x_name: sample_inputs(1)}, [y_name], toy.run, deadline=time.monotonic() + 0.01)
    finally:
        s.stop()
    assert (e.value.code, e.value.message) == ("RESOURCE_EXHAUSTED",
                                               "Run() timeout exceeded while waiting in batching queue")
    assert s.stats.refused_timeout == 1 and s.stats.batches == 0


def test_versions_and_signatures_get_separate_queues(toy):
    class Owner:  # a second loaded version of the same graph
        pass

    s = scheduler(max_batch_size=8, batch_timeout_micros=200_000)
    toy.runs.clear()
    other = Owner()
    x_name, y_name = toy.tensor("inputs", "x"), toy.tensor("outputs", "y")
    calls = [lambda: predict_toy(s, toy)(sample_inputs(1)),
             lambda: predict_toy(s, toy, owner=other)(sample_inputs(1)),
             lambda: s.run(toy, {x_name: sample_inputs(1)}, [y_name], toy.run)]  # fetches y only
    try:
        concurrently(lambda f: f(), calls)
    finally:
        s.stop()
    assert s.stats.batches == 3 and len(toy.runs) == 3


def test_inputs_of_different_shapes_are_not_merged(seq):
    s = scheduler(max_batch_size=8, batch_timeout_micros=300_000)
    seq.runs.clear()
    t_name = seq.tensor("inputs", "tokens")
    out = [seq.tensor("outputs", "total"), seq.tensor("outputs", "echo")]
    xs = [np.array([[1, 2, 3]], np.int32), np.array([[4, 5, 6, 7, 8]], np.int32), np.array([[9, 9, 9]], np.int32)]

    def call(x):
        time.sleep(0.02 * int(x[0, 0] == 4))  # the long one arrives second
        return s.run(seq, {t_name: x}, out, seq.run)

    try:
        got = concurrently(call, xs)
    finally:
        s.stop()
    # the two [1,3] requests share a batch when both arrive before the [1,5] one; never with it
    assert sorted(r[t_name] for r in seq.runs) in ([(1, 3), (1, 3), (1, 5)], [(1, 5), (2, 3)])
    for x, (total, echo) in zip(xs, got):
        np.testing.assert_array_equal(total, x.sum(axis=1))
        np.testing.assert_array_equal(echo, x)


def test_pad_variable_length_inputs_merges_with_tf_servings_padding(seq):
    """TF Serving pads each task to the batch's largest shape with the task's first element; the
    outputs keep the padded shape (only the rows are sliced)."""
    s = scheduler(max_batch_size=8, batch_timeout_micros=10_000_000, pad_variable_length_inputs=True)
    seq.runs.clear()
    t_name = seq.tensor("inputs", "tokens")
    out = [seq.tensor("outputs", "total"), seq.tensor("outputs", "echo")]
    xs = [np.array([[1, 2, 3]] * 4, np.int32), np.array([[4, 5, 6, 7, 8]] * 4, np.int32)]
    try:
        got = concurrently(lambda x: s.run(seq, {t_name: x}, out, seq.run), xs)
    finally:
        s.stop()
    assert seq.runs == [{t_name: (8, 5)}]
    (total_a, echo_a), (total_b, echo_b) = got
    np.testing.assert_array_equal(echo_a, np.array([[1, 2, 3, 1, 1]] * 4, np.int32))
    np.testing.assert_array_equal(total_a, [8] * 4)
    np.testing.assert_array_equal(echo_b, xs[1])
    np.testing.assert_array_equal(total_b, [30] * 4)


def test_inputs_need_a_shared_batch_dimension(toy):
    s = scheduler()
    try:
        with pytest.raises(BatchingError, match="must have at least one dimension"):
            s.run(toy, {"x:0": np.float32(1)}, ["y:0"], toy.run)
        with pytest.raises(BatchingError, match="must have equal 0th-dimension size"):
            s.run(toy, {"a": np.zeros((1, 4)), "b": np.zeros((2, 4))}, ["y:0"], toy.run)
    finally:
        s.stop()


def test_stop_runs_what_was_queued(toy):
    s = scheduler(max_batch_size=8, batch_timeout_micros=60_000_000)
    with cf.ThreadPoolExecutor(1) as pool:
        f = pool.submit(predict_toy(s, toy), sample_inputs(1))
        _wait_for(lambda: s.queue_lengths() == [1])
        s.stop()
        y, _ = f.result(10)
    np.testing.assert_array_equal(y, alone(toy, sample_inputs(1))[0])
    with pytest.raises(BatchingError, match="shutting down"):
        predict_toy(s, toy)(sample_inputs(1))


# ---------------------------------------------------------------------------------------------
# options


def test_options_take_tf_serving_defaults_for_missing_fields():
    msg = companions.parse_batching_parameters("max_batch_size { value: 16 }\n")
    opts = BatchingOptions.from_proto(msg)
    assert (opts.max_batch_size, opts.batch_timeout_micros, opts.max_enqueued_batches) == (16, 0, 10)
    assert opts.allowed_batch_sizes == () and opts.execution_limit == 16
    msg = companions.parse_batching_parameters("max_enqueued_batches { value: 0 }\n")
    assert BatchingOptions.from_proto(msg).max_enqueued_batches == 1  # AddQueue rewrites 0 to 1


def test_options_refuse_what_tf_serving_refuses(tmp_path):
    bad = tmp_path / "b.txt"
    bad.write_text("max_batch_size { value: 4 }\nenable_large_batch_splitting { value: true }\n"
                   "max_execution_batch_size { value: 8 }\n")
    with pytest.raises(ConfigError) as e:
        batching.read_options(bad)
    msg = str(e.value)
    assert msg.startswith(f"{bad}: When enable_large_batch_splitting is true") and "\n" not in msg


def test_from_flags_builds_a_scheduler_only_with_enable_batching(tmp_path):
    import logging

    log = logging.getLogger("test-batching")
    f = tmp_path / "batching_parameters.txt"
    f.write_text(companions.batching_parameters_text([1, 8]))
    assert batching.from_flags(False, "", log) is None
    assert batching.from_flags(False, f, log) is None  # checked, but not batching (logged)
    s = batching.from_flags(True, f, log)
    try:
        assert s.options.max_batch_size == 8 and s.options.allowed_batch_sizes == (1, 8)
    finally:
        s.stop()
    d = batching.from_flags(True, "", log)
    try:
        assert d.options.thread_pool_name == "model_server_batch_threads"
        assert d.options.max_batch_size == 1000
    finally:
        d.stop()


# ---------------------------------------------------------------------------------------------
# through the local server


def _server(repo: Path, tmp_path: Path, models: list[str], text: str) -> LocalServer:
    cfg = write_models_config(tmp_path / "models.config",
                              [{"name": m, "base_path": repo / m} for m in models])
    params = tmp_path / "batching_parameters.txt"
    params.write_text(text)
    return LocalServer(cfg, enable_batching=True, batching_parameters_file=params,
                       file_system_poll_wait_seconds=0, grpc_max_threads=24)


def _grpc_predict(target: str, name: str, alias: str, x: np.ndarray, timeout: float = 30, **spec):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    req = predict_pb2.PredictRequest()
    req.model_spec.name = name
    req.model_spec.signature_name = spec.get("signature", "")
    req.inputs[alias].CopyFrom(tf.make_tensor_proto(x))
    with grpc.insecure_channel(target) as ch:
        resp = prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict(req, timeout=timeout)
    return {k: tf.make_ndarray(v) for k, v in resp.outputs.items()}


def _rest(server: LocalServer, path: str, body: dict) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(server.host, server.rest_port, timeout=30)
    try:
        conn.request("POST", path, body=json.dumps(body))
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def test_local_server_batches_concurrent_grpc_clients_with_identical_answers(repo, tmp_path):
    text = companions.batching_parameters_text([2, 4, 8], batch_timeout_micros=200_000, num_batch_threads=1)
    xs = [sample_inputs(1, seed=i) for i in range(8)]
    with _server(repo, tmp_path, ["toy"], text) as server:
        server.wait_until_ready(60)
        warm = server.batcher.stats.batches  # warmup records (batch 1 and 4) ran through the batcher
        got = concurrently(lambda x: _grpc_predict(server.grpc_target, "toy", "x", x), xs)
        stats = server.batcher.stats
        merged = stats.batches - warm
    with LocalServer(tmp_path / "models.config", file_system_poll_wait_seconds=0) as plain:
        plain.wait_until_ready(60)
        want = [_grpc_predict(plain.grpc_target, "toy", "x", x) for x in xs]
    assert warm == 2
    assert merged < len(xs)  # fewer Session.runs than requests: they were merged
    assert set(stats.sizes) <= {2, 4, 8}  # every batch ran at an allowed size
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g["y"], w["y"])
        np.testing.assert_array_equal(g["z"], w["z"])


def test_local_server_back_pressure_is_503_and_too_large_is_400(repo, tmp_path):
    text = ("max_batch_size { value: 2 }\nbatch_timeout_micros { value: 0 }\n"
            "max_enqueued_batches { value: 1 }\nnum_batch_threads { value: 1 }\n")
    body = {"instances": [[1.0, 2.0, 3.0, 4.0]]}
    with _server(repo, tmp_path, ["gate"], text) as server:
        server.wait_until_ready(60)
        pool = cf.ThreadPoolExecutor(3)
        try:
            held = [pool.submit(_rest, server, "/v1/models/gate:predict", body)]
            _wait_for(lambda: server.batcher.queue_lengths() == [0])  # running, blocked on the gate
            held += [pool.submit(_rest, server, "/v1/models/gate:predict", body) for _ in range(2)]
            _wait_for(lambda: sorted(server.batcher.queue_lengths()) == [2])
            full = _rest(server, "/v1/models/gate:predict", body)
            too_big = _rest(server, "/v1/models/gate:predict", {"instances": [[0.0] * 4] * 3})
            _release(server, 2)
            answers = [f.result(30) for f in held]
        finally:
            _release(server, 4)
            pool.shutdown()
    assert full == (503, {"error": "The batch scheduling queue to which this task was submitted is full; "
                                   "currently 1 batches enqueued and max_enqueued_batches is 1"})
    assert too_big == (400, {"error": "Task size 3 is larger than maximum input batch size 2"})
    assert answers == [(200, {"predictions": [[2.0, 4.0, 6.0, 8.0]]})] * 3


def test_local_server_refuses_queued_grpc_request_past_its_deadline(repo, tmp_path):
    text = "max_batch_size { value: 1 }\nnum_batch_threads { value: 1 }\n"
    with _server(repo, tmp_path, ["gate"], text) as server:
        server.wait_until_ready(60)
        x = np.ones((1, 4), np.float32)
        with cf.ThreadPoolExecutor(2) as pool:
            first = pool.submit(_grpc_predict, server.grpc_target, "gate", "x", x)
            _wait_for(lambda: server.batcher.queue_lengths() == [0])
            with pytest.raises(grpc.RpcError) as e:
                _grpc_predict(server.grpc_target, "gate", "x", x, timeout=0.3)
            _release(server, 2)
            np.testing.assert_array_equal(first.result(30)["y"], 2 * x)
        _wait_for(lambda: server.batcher.stats.refused_timeout == 1)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # the client gave up; the server
    # then refused the expired task instead of running it (RESOURCE_EXHAUSTED, as TF Serving)


def test_warmup_bigger_than_max_batch_size_fails_the_load_as_in_tf_serving(repo, tmp_path):
    """toy's warmup has a batch of 4: with max_batch_size 2 TF Serving fails the load."""
    from builder.core.errors import ServingError

    server = _server(repo, tmp_path, ["toy"], "max_batch_size { value: 2 }\n")
    with pytest.raises(ServingError, match="Task size 4 is larger than maximum input batch size 2"):
        server.start()
    server.stop()


def _release(server: LocalServer, n: int) -> None:
    """Put n tokens in the gate model's queue straight through its session (the batch threads
    may all be blocked on the gate, so this must not queue behind them)."""
    s = server.manager.acquire("gate")
    try:
        sig = s.signatures["release"]
        s.session.run(sig.outputs["released"].name, {sig.inputs["n"].name: np.ones(n, np.float32)})
    finally:
        s.release()


def _wait_for(cond, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        time.sleep(0.005)


def test_reconfigure_drains_then_applies_new_options(toy):
    s = scheduler(max_batch_size=2, batch_timeout_micros=10_000_000)
    toy.runs.clear()
    xs = [sample_inputs(1, seed=i) for i in range(4)]
    try:
        concurrently(predict_toy(s, toy), xs[:2])  # a full batch of 2
        assert s.take_stats().batches == 1
        s.reconfigure(BatchingOptions(max_batch_size=4, batch_timeout_micros=10_000_000, num_batch_threads=1))
        got = concurrently(predict_toy(s, toy), xs)  # now all four fit one batch
    finally:
        s.stop()
    assert [r[toy.tensor("inputs", "x")][0] for r in toy.runs] == [2, 4]
    assert s.stats.batches == 1 and s.stats.tasks == 4
    for x, (y, _) in zip(xs, got):
        np.testing.assert_array_equal(y, alone(toy, x)[0])


def test_splitting_refuses_what_the_queue_cannot_hold_with_tf_servings_wording(toy):
    s = scheduler(max_batch_size=10, enable_large_batch_splitting=True, max_execution_batch_size=2,
                  max_enqueued_batches=2, batch_timeout_micros=0)
    try:
        y, _ = predict_toy(s, toy)(sample_inputs(4))  # exactly the capacity (2 batches x 2 rows)
        with pytest.raises(BatchingError) as e:
            predict_toy(s, toy)(sample_inputs(5))
    finally:
        s.stop()
    np.testing.assert_array_equal(y, alone(toy, sample_inputs(4))[0])
    assert e.value.code == "UNAVAILABLE"
    assert e.value.message == ("The batch scheduling queue to which this task was submitted is full; task size "
                               "is 5 but scheduling capacity is only 4 (num_enqueued_batches=1, "
                               "max_enqueued_batches=2, open_batch_size=0, max_execution_batch_size=2)")


@pytest.mark.slow
def test_serve_command_enable_batching_flag_end_to_end(repo, tmp_path):
    """`python -m builder serve --enable_batching --batching_parameters_file F` (a child process,
    flags as tensorflow_model_server takes them) batches concurrent gRPC clients."""
    from builder.serve.handles import ProcessServer

    cfg = write_models_config(tmp_path / "models.config", [{"name": "toy", "base_path": repo / "toy"}])
    params = tmp_path / "batching_parameters.txt"
    params.write_text(companions.batching_parameters_text([4, 8], batch_timeout_micros=300_000, num_batch_threads=1))
    xs = [sample_inputs(1, seed=i) for i in range(8)]
    with ProcessServer(cfg, extra_flags=("--enable_batching", "--batching_parameters_file", str(params)),
                       file_system_poll_wait_seconds=0) as server:
        server.wait_until_ready(120)
        got = concurrently(lambda x: _grpc_predict(server.grpc_target, "toy", "x", x), xs)
        log = server.log_text()
    assert "Wrapping session to perform batch processing: max_batch_size=8" in log
    for x, g in zip(xs, got):
        np.testing.assert_allclose(g["y"], toy_reference(x, 1)["y"], atol=1e-5)

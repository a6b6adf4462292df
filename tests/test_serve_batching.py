"""Batching wired into the split server: Classify, Regress and MultiInference run through the
batch scheduler like Predict (TF Serving wraps the whole session in a BatchingSession), warmup
records of every kind are batched at load, answers are identical to a server without batching,
and an unloaded version is not kept alive by the scheduler's queues. Real tf.Example model, real
local servers on 127.0.0.1, the official gRPC stubs."""

from __future__ import annotations

import concurrent.futures as cf
import gc
import weakref
from pathlib import Path

import numpy as np
import pytest

from builder.config import companions
from builder.serve.client import CLASSIFY, REGRESS, GrpcClient, classifications
from builder.serve.local import LocalServer
from integration_tests.fixture_models import build_example_model, write_models_config

EXAMPLES = [[{"x": [0.5 * i, -1.0 + i], "k": i % 3}, {"x": [2.0, 0.25 * i]}] for i in range(6)]


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("batching-examples")
    build_example_model(root, "census", 1)  # warmup: one classify, regress, multi_inference, predict record
    return root


def _server(repo: Path, tmp_path: Path, batching: bool) -> LocalServer:
    cfg = write_models_config(tmp_path / "models.config", [{"name": "census", "base_path": repo / "census"}])
    if not batching:
        return LocalServer(cfg, file_system_poll_wait_seconds=0)
    params = tmp_path / "batching_parameters.txt"
    # one thread and a long timeout: concurrent requests queue up and run as few batches
    params.write_text(companions.batching_parameters_text([4, 8, 16], batch_timeout_micros=200_000,
                                                          num_batch_threads=1))
    return LocalServer(cfg, file_system_poll_wait_seconds=0, enable_batching=True, batching_parameters_file=params)


def _ask(target: str, kind: str, examples: list[dict]) -> list:
    """One request of ``kind``; the answer as plain numbers (labels + scores, or values)."""
    with GrpcClient(target) as c:
        if kind == "classify":
            return classifications(c.classify("census", examples).result)
        if kind == "regress":
            return [r.value for r in c.regress("census", examples, signature="regress").result.regressions]
        resp = c.multi_inference("census", examples, [("", CLASSIFY), ("regress", REGRESS)])
        return [classifications(resp.results[0].classification_result),
                [r.value for r in resp.results[1].regression_result.regressions]]


@pytest.mark.parametrize("kind", ["classify", "regress", "multi_inference"])
def test_example_apis_are_batched_with_answers_identical_to_unbatched(repo, tmp_path, kind):
    with _server(repo, tmp_path / "plain", batching=False) as plain:
        plain.wait_until_ready(60)
        want = [_ask(plain.grpc_target, kind, ex) for ex in EXAMPLES]
    with _server(repo, tmp_path / "batched", batching=True) as server:
        server.wait_until_ready(60)
        warm = server.batcher.take_stats()
        with cf.ThreadPoolExecutor(len(EXAMPLES)) as pool:
            got = list(pool.map(lambda ex: _ask(server.grpc_target, kind, ex), EXAMPLES))
        stats = server.batcher.take_stats()
    # the four warmup records (classify, regress, multi_inference, predict) ran through the batcher
    assert warm.tasks == 4
    assert stats.tasks == len(EXAMPLES) and stats.rows == 2 * len(EXAMPLES)
    assert stats.batches < len(EXAMPLES), stats.as_dict()  # requests were merged
    assert got == want  # bit-identical: labels, scores and values as the unbatched server answers


def test_unloaded_version_is_not_kept_alive_by_the_scheduler(repo, tmp_path):
    with _server(repo, tmp_path, batching=True) as server:
        server.wait_until_ready(60)
        servable = server.manager.acquire("census")
        ref = weakref.ref(servable)
        servable.release()
        del servable
        assert np.isfinite(_ask(server.grpc_target, "regress", EXAMPLES[0])[0])
        assert server.batcher.queue_lengths()  # the version has queues while it is loaded
        server.reload_config([])  # unload every model
        gc.collect()
        assert ref() is None, "an unloaded version is still referenced (its session stays in memory)"
        assert server.batcher.queue_lengths() == []

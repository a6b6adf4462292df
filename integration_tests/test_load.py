"""Bounded load on 127.0.0.1, and versions added/removed while clients run: zero failed requests,
every answer equal to the numpy reference of the version that served it.

Bounds: 4 clients x LOAD_SECONDS, and at most MAX_REQUESTS_PER_CLIENT each.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pytest

from builder.serve.client import GrpcClient, RestClient, outputs, rows_to_arrays
from integration_tests.conftest import BACKENDS, Repo, make_server, started
from integration_tests.fixture_models import build_toy_version, sample_inputs, toy_reference, write_models_config

LOAD_SECONDS = float(os.environ.get("TFS_LOAD_SECONDS", "5"))
MAX_REQUESTS_PER_CLIENT = 20000
ATOL = 1e-5


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)  # serving version per answer (gRPC), in order
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, seconds: float, error: str | None = None, version: int | None = None) -> None:
        with self.lock:
            self.latencies.append(seconds)
            if error:
                self.errors.append(error)
            if version is not None:
                self.versions.append(version)


def client(kind: str, server, stop: threading.Event, tally: Tally, x: np.ndarray,
           model: str, version: int | None = None, max_requests: int = MAX_REQUESTS_PER_CLIENT,
           accept: tuple[int, ...] = (1, 2, 3)) -> None:
    """One client thread: REST rows or gRPC; checks each answer against the numpy reference of
    the version that answered (REST carries no version, so any accepted version must match)."""
    refs = {v: toy_reference(x, v)["y"] for v in accept}
    conn = RestClient(server.rest_url) if kind == "rest" else GrpcClient(server.grpc_target)
    path = f"/v1/models/{model}" + (f"/versions/{version}" if version else "") + ":predict"
    body = {"instances": x.tolist()}
    try:
        for _ in range(max_requests):
            if stop.is_set():
                break
            t0 = time.perf_counter()
            try:
                if kind == "rest":
                    status, got = conn.post(path, body)
                    if status != 200:
                        tally.add(time.perf_counter() - t0, f"HTTP {status}: {got}")
                        continue
                    y = rows_to_arrays(got["predictions"])["y"]
                    served = None
                    ok = any(np.allclose(y, r, atol=ATOL) for r in refs.values())
                else:
                    resp = conn.predict(model, {"x": x}, version=version)
                    served = resp.model_spec.version.value
                    y = outputs(resp)["y"]
                    ok = served in refs and np.allclose(y, refs[served], atol=ATOL)
                tally.add(time.perf_counter() - t0, None if ok else f"wrong answer (version {served})", served)
            except Exception as e:  # noqa: BLE001 - every failure is counted, none may happen
                tally.add(time.perf_counter() - t0, f"{type(e).__name__}: {e}")
    finally:
        conn.close()


def run_clients(specs: list[tuple], server, seconds: float, during=None) -> dict[str, Tally]:
    """Start one thread per spec (kind, model, version), run ``during`` (or sleep), stop, join."""
    stop = threading.Event()
    tallies = {f"{i}:{s[0]}": Tally() for i, s in enumerate(specs)}
    threads = []
    for (name, tally), (kind, model, version, x) in zip(tallies.items(), specs, strict=True):
        t = threading.Thread(target=client, args=(kind, server, stop, tally, x, model, version), name=name)
        t.start()
        threads.append(t)
    t0 = time.monotonic()
    try:
        if during is not None:
            during(tallies)
        remaining = seconds - (time.monotonic() - t0)
        if remaining > 0:
            time.sleep(remaining)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a client thread did not stop"
    return tallies


def summary(tallies: dict[str, Tally], seconds: float) -> tuple[int, float, float]:
    lat = np.concatenate([np.asarray(t.latencies) for t in tallies.values()])
    return len(lat), len(lat) / seconds, float(np.percentile(lat * 1000, 99))


def test_bounded_concurrent_load(server, toy_repo: Repo, record_property):
    x = sample_inputs(4, seed=42)
    specs = [("rest", "toy_latest", None, x), ("rest", "toy", 1, x),
             ("grpc", "toy_latest", None, x), ("grpc", "toy", 1, x)]
    t0 = time.monotonic()
    tallies = run_clients(specs, server, LOAD_SECONDS)
    elapsed = time.monotonic() - t0
    errors = [e for t in tallies.values() for e in t.errors]
    assert errors == [], errors[:5]
    n, rps, p99 = summary(tallies, elapsed)
    for kind in ("rest", "grpc"):
        sub = {k: t for k, t in tallies.items() if k.endswith(kind)}
        kn, krps, kp99 = summary(sub, elapsed)
        print(f"\nLOAD {server.backend} {kind}: {kn} requests, {krps:.0f} req/s, p99 {kp99:.1f} ms")
    print(f"LOAD {server.backend} total: {n} requests in {elapsed:.1f} s, {rps:.0f} req/s, p99 {p99:.1f} ms, 0 errors")
    record_property("requests_per_second", round(rps, 1))
    record_property("p99_ms", round(p99, 2))
    assert all(len(t.latencies) > 10 for t in tallies.values()), "a client barely ran"
    grpc_versions = {v for k, t in tallies.items() if k.endswith("grpc") for v in t.versions}
    assert grpc_versions == {1, 2}


@pytest.fixture(params=BACKENDS)
def hot_server(request, tmp_path):
    """Its own repository: model "hot" (latest 2 versions) with versions 1 and 2; version 3 is
    built aside, to be moved in atomically by the test."""
    root = tmp_path / "repo"
    for v in (1, 2):
        build_toy_version(root, "hot", v)
    aside = build_toy_version(tmp_path / "aside", "hot", 3)
    config = write_models_config(root / "models.config",
                                 [{"name": "hot", "base_path": root / "hot", "num_versions": 2}])
    from builder.config.companions import write_companions

    comp = write_companions(root / "serving", [1, 4])
    repo = Repo(root, config, comp["batching"], comp["monitoring"], {"hot": [1, 2]})
    handle = make_server(request.param, repo, file_system_poll_wait_seconds=1)
    handle.backend = request.param
    handle.aside = aside
    handle.repo_root = root
    yield from started(handle)


def _wait_for_latest(tallies: dict[str, Tally], version: int, deadline: float) -> float:
    """Seconds until the latest-following gRPC client's last 5 answers came from ``version``."""
    t0 = time.monotonic()
    watch = next(t for k, t in tallies.items() if k.startswith("0:"))
    while time.monotonic() - t0 < deadline:
        with watch.lock:
            tail = watch.versions[-5:]
        if len(tail) == 5 and all(v == version for v in tail):
            return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"latest did not switch to version {version} within {deadline} s "
                         f"(last answers from {tail})")


def test_version_added_and_removed_under_load(hot_server, record_property):
    from tensorflow_serving.apis import get_model_status_pb2

    server = hot_server
    x = sample_inputs(3, seed=5)
    specs = [("grpc", "hot", None, x), ("grpc", "hot", 2, x), ("rest", "hot", None, x), ("rest", "hot", 2, x)]
    timeline = {}

    def during(tallies):
        time.sleep(1.0)
        os.rename(server.aside, server.repo_root / "hot" / "3")  # atomic, as the builder promotes
        timeline["add_seconds"] = _wait_for_latest(tallies, 3, 30)
        time.sleep(1.0)
        shutil.rmtree(server.repo_root / "hot" / "3")
        timeline["remove_seconds"] = _wait_for_latest(tallies, 2, 30)
        time.sleep(1.0)

    t0 = time.monotonic()
    tallies = run_clients(specs, server, 0, during=during)
    elapsed = time.monotonic() - t0
    errors = [e for t in tallies.values() for e in t.errors]
    assert errors == [], errors[:5]
    latest = tallies["0:grpc"].versions
    # latest answers go 2...2 3...3 2...2: no interleaving, no gap
    first3 = latest.index(3)
    last3 = len(latest) - 1 - latest[::-1].index(3)
    assert set(latest[:first3]) == {2}
    assert set(latest[first3:last3 + 1]) == {3}
    assert latest[last3 + 1:] and set(latest[last3 + 1:]) == {2}
    assert set(tallies["1:grpc"].versions) == {2}
    n, rps, p99 = summary(tallies, elapsed)
    print(f"\nHOT {server.backend}: add picked up in {timeline['add_seconds']:.2f} s, removal in "
          f"{timeline['remove_seconds']:.2f} s; {n} requests, {rps:.0f} req/s, p99 {p99:.1f} ms, 0 errors")
    record_property("add_seconds", round(timeline["add_seconds"], 2))
    record_property("remove_seconds", round(timeline["remove_seconds"], 2))
    status = GrpcClient(server.grpc_target)
    try:
        states = {s.version: s.state for s in status.status("hot").model_version_status}
    finally:
        status.close()
    assert states.get(2) == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert states.get(1) == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert states.get(3) != get_model_status_pb2.ModelVersionStatus.AVAILABLE


@pytest.mark.slow
def test_32_clients_while_a_version_is_added_and_the_served_version_deleted(hot_server, record_property):
    """16 REST + 16 gRPC clients (12 of each follow "latest", 4 pin version 2) for ~20 s while
    version 3 is added and then, while it serves "latest", deleted: 0 failed requests, every
    answer equal to the reference of the version that served it, no latest client ever
    answered by 3 after having fallen back to 2."""
    server = hot_server
    x = sample_inputs(2, seed=9)
    specs = ([("grpc", "hot", None, x)] * 12 + [("grpc", "hot", 2, x)] * 4
             + [("rest", "hot", None, x)] * 12 + [("rest", "hot", 2, x)] * 4)
    timeline = {}

    def during(tallies):
        time.sleep(2.0)
        os.rename(server.aside, server.repo_root / "hot" / "3")
        timeline["add_seconds"] = _wait_for_latest(tallies, 3, 30)
        time.sleep(6.0)
        shutil.rmtree(server.repo_root / "hot" / "3")  # the version "latest" is being served from
        timeline["remove_seconds"] = _wait_for_latest(tallies, 2, 30)
        time.sleep(6.0)

    t0 = time.monotonic()
    tallies = run_clients(specs, server, 0, during=during)
    elapsed = time.monotonic() - t0
    errors = [e for t in tallies.values() for e in t.errors]
    n, rps, p99 = summary(tallies, elapsed)
    print(f"\nROLL32 {server.backend}: {n} requests in {elapsed:.1f} s ({rps:.0f} req/s, p99 {p99:.0f} ms), "
          f"{len(errors)} failed; add picked up in {timeline['add_seconds']:.2f} s, removal in "
          f"{timeline['remove_seconds']:.2f} s")
    record_property("requests", n)
    record_property("failed", len(errors))
    assert errors == [], errors[:5]
    assert all(len(t.latencies) >= 5 for t in tallies.values()), "a client barely ran"
    for key, t in tallies.items():
        if key.endswith("grpc") and int(key.split(":")[0]) < 12 and 3 in t.versions:
            first3 = t.versions.index(3)
            last3 = len(t.versions) - 1 - t.versions[::-1].index(3)
            assert set(t.versions[first3:last3 + 1]) == {3}, f"{key} went back to 2 and then to 3 again"
        elif key.endswith("grpc") and int(key.split(":")[0]) >= 12:
            assert set(t.versions) == {2}, f"{key} pinned to version 2 got {set(t.versions)}"

"""The local server follows TF Serving 2.17's life-cycle rules (builder/config/lifecycle.py, applied
by builder/serve/manager.py), each checked on tiny real SavedModels through the real server
(``LocalServer`` in-process, or ``python -m builder serve`` through the CLI entry point) with
real REST / gRPC clients. The TF Serving source behind each rule is named in the test's docstring
(files under tensorflow_serving/ at tag 2.17.0). Retry intervals are a fraction of a second so the
suite stays fast; the defaults (5 retries, 60 s) are TF Serving's and tested at the flag level.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from datetime import datetime
from pathlib import Path

import grpc
import numpy as np
import pytest

from builder.cli import main as cli_main
from builder.config import lifecycle
from builder.core.errors import ServerStartError, ServingError
from builder.serve.client import GrpcClient, RestClient, RestError
from builder.serve.local import LocalServer
from builder.serve.status import RpcStatus
from integration_tests.fixture_models import build_toy_version, sample_inputs, toy_reference, write_models_config

FAST = {"load_retry_interval_micros": 100_000}  # 0.1 s between load attempts
LABEL_REFUSED = ("Request to assign label to version {v} of model toy, which is not currently available "
                 "for inference")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """Pristine toy/1 and toy/2 (different weights, so answers tell the versions apart)."""
    root = tmp_path_factory.mktemp("built")
    for v in (1, 2):
        build_toy_version(root, "toy", v)
    return root


@pytest.fixture
def repo(built, tmp_path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(built, root)
    return root


def config(repo: Path, **model) -> Path:
    return write_models_config(repo / "models.config", [{"name": "toy", "base_path": repo / "toy", **model}])


def config_text(repo: Path, policy: str = "", labels: dict[str, int] | None = None) -> str:
    labels_text = " ".join(f'version_labels {{ key: "{k}" value: {v} }}' for k, v in (labels or {}).items())
    return (f'model_config_list {{ config {{ name: "toy" base_path: "{repo / "toy"}" model_platform: "tensorflow" '
            f"{policy} {labels_text} }} }}")


def answer(rest: RestClient, **where) -> list[float]:
    """y of toy for two fixed rows, from whichever version serves the request."""
    return [p["y"] for p in rest.predict("toy", instances=sample_inputs(2).tolist(), **where)["predictions"]]


def served_by(version: int) -> list[float]:
    return toy_reference(sample_inputs(2), version)["y"].tolist()


def states(s: LocalServer, name: str = "toy") -> dict[int, str]:
    try:
        return {v: st.state for v, st in s.manager.status(name)}
    except RpcStatus:
        return {}


def wait_for(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def break_version(repo: Path, version: int, name: str = "toy") -> Path:
    """A version whose saved_model.pb is not a SavedModel, renamed into place (as the builder
    stages versions) so the server never sees half of it."""
    staging = repo / name / f".staging-{version}"
    shutil.copytree(repo.parent / "pristine2", staging)
    (staging / "saved_model.pb").write_bytes(b"not a SavedModel")
    final = repo / name / str(version)
    os.rename(staging, final)
    return final


def approx(a: list, b: list) -> bool:
    return np.allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# labels (model_servers/server_core.cc ServerCore::UpdateModelVersionLabelMap)


def test_label_in_the_first_config_fails_start_up_without_the_flag(repo):
    """Labels are checked against AVAILABLE versions before any model is added, so a first
    config with a label exits ("Failed to start server") unless
    --allow_version_labels_for_unavailable_models; with it, the label serves."""
    cfg = config(repo, labels={"stable": 2})
    s = LocalServer(cfg)
    with pytest.raises(ServerStartError) as err:
        s.start()
    assert str(err.value) == "Failed to start server. Error: FAILED_PRECONDITION: " + LABEL_REFUSED.format(v=2)
    assert s._grpc is None and s._http is None and states(s) == {}  # refused before any load

    with LocalServer(cfg, allow_version_labels_for_unavailable_models=True) as s, RestClient(s.rest_url) as rest:
        assert approx(answer(rest, label="stable"), served_by(2))
        assert rest.status("toy", label="stable")["model_version_status"][0]["version"] == "2"


def test_cli_serve_exits_1_with_tf_servings_message_on_a_refused_label(repo, capsys):
    cfg = config(repo, labels={"stable": 2})
    assert cli_main(["serve", "--model_config_file", str(cfg), "--port", "0", "--rest_api_port", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == "error: Failed to start server. Error: FAILED_PRECONDITION: " + LABEL_REFUSED.format(v=2)


def test_a_label_cannot_move_to_a_version_that_is_not_available(repo):
    """Even with the flag, an existing label may not move to a version that is not AVAILABLE;
    the refused config is rejected whole (the version it would add is not loaded either). The
    two-step rollout works: add the version, then move the label once it is AVAILABLE. A *new*
    label may point at an unavailable version under the flag."""
    cfg = config(repo, policy="specific", versions=[1], labels={"stable": 1})
    with LocalServer(cfg, allow_version_labels_for_unavailable_models=True, file_system_poll_wait_seconds=60) as s, \
            GrpcClient(s.grpc_target) as client, RestClient(s.rest_url) as rest:
        assert states(s) == {1: "AVAILABLE"}
        both = "model_version_policy { specific { versions: 1 versions: 2 } }"
        with pytest.raises(grpc.RpcError) as err:
            client.reload_config(config_text(repo, both, {"stable": 2}))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.value.details() == LABEL_REFUSED.format(v=2)
        assert states(s) == {1: "AVAILABLE"}  # old config kept: version 2 not even loaded
        assert approx(answer(rest, label="stable"), served_by(1))

        assert client.reload_config(config_text(repo, both, {"stable": 1, "canary": 2})).status.error_code == 0
        assert states(s) == {1: "AVAILABLE", 2: "AVAILABLE"}
        assert approx(answer(rest, label="canary"), served_by(2))
        assert client.reload_config(config_text(repo, both, {"stable": 2})).status.error_code == 0
        assert approx(answer(rest, label="stable"), served_by(2))
        with pytest.raises(RestError, match="Unrecognized servable version label: canary"):
            answer(rest, label="canary")  # a label left out of the new config is gone


def test_a_refused_config_file_keeps_the_current_config(repo):
    """server.cc PollFilesystemAndReloadConfig: ReloadConfig fails, the running config stays."""
    cfg = config(repo)
    with LocalServer(cfg, model_config_file_poll_wait_seconds=0.1, file_system_poll_wait_seconds=60) as s, \
            RestClient(s.rest_url) as rest:
        write_models_config(cfg, [{"name": "toy", "base_path": repo / "toy", "policy": "all",
                                   "labels": {"old": 1}}])
        wait_for(lambda: LABEL_REFUSED.format(v=1) in s.log_text(), what="the refusal to be logged")
        assert "keeping the current config" in s.log_text()
        assert states(s) == {2: "AVAILABLE"}  # policy "all" not applied: version 1 not loaded
        with pytest.raises(RestError, match="Unrecognized servable version label: old"):
            answer(rest, label="old")


# ---------------------------------------------------------------------------------------------
# availability preservation and retries (core/availability_preserving_policy.cc, util/retrier.cc,
# core/aspired_versions_manager.cc)


def _attempt_times(log: str, version: int) -> list[float]:
    stamps = re.findall(rf"^(\S+ \S+) E Loading servable: \{{name: toy version: {version}\}} failed", log, re.M)
    return [datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f").timestamp() for t in stamps]


def test_a_failing_new_version_keeps_the_old_one_serving_and_is_retried_then_left_alone(repo):
    """v2 appears broken beside a serving v1: v1 keeps answering (it is unloaded only once an
    aspired version is ready), v2 is tried 1 + --max_num_load_retries times,
    --load_retry_interval_micros apart, then never again while its directory stays; once the
    directory is gone and a good v2 appears, it loads and v1 is unloaded."""
    shutil.rmtree(repo / "toy" / "2")
    with LocalServer(config(repo), file_system_poll_wait_seconds=0.05, max_num_load_retries=2, **FAST) as s, \
            RestClient(s.rest_url) as rest:
        assert approx(answer(rest), served_by(1))
        break_version(repo, 2)
        wait_for(lambda: states(s).get(2) == "END", what="version 2 to fail every attempt")
        assert states(s) == {1: "AVAILABLE", 2: "END"}
        status = rest.status("toy", version=2)["model_version_status"][0]
        assert status["status"]["error_code"] == "INVALID_ARGUMENT"
        assert "Failed to load SavedModel" in status["status"]["error_message"]
        assert approx(answer(rest), served_by(1))  # "latest" still finds a version
        times = _attempt_times(s.log_text(), 2)
        assert len(times) == 3 and all(b - a >= 0.09 for a, b in zip(times, times[1:]))
        assert "Retrying of Loading servable: {name: toy version: 2} retry: 2" in s.log_text()
        assert "exhausted max_num_retries: 2" in s.log_text()
        time.sleep(0.6)  # a dozen more polls: the failed version is left alone
        assert len(_attempt_times(s.log_text(), 2)) == 3

        shutil.rmtree(repo / "toy" / "2")  # gone from disk: forgotten, a new v2 gets fresh attempts
        time.sleep(0.2)
        shutil.copytree(repo.parent / "pristine2", repo / "toy" / ".staging")
        os.rename(repo / "toy" / ".staging", repo / "toy" / "2")
        wait_for(lambda: states(s) == {1: "END", 2: "AVAILABLE"}, what="good v2 to replace v1")
        assert approx(answer(rest), served_by(2))


@pytest.fixture(autouse=True)
def _pristine_v2(repo):
    """A copy of the good toy/2 outside the base path, for tests that delete and restore it."""
    shutil.copytree(repo / "toy" / "2", repo.parent / "pristine2")


def test_a_version_that_recovers_between_attempts_loads(repo):
    """A half-copied version (TF Serving loads a directory the moment it appears) fails its
    first attempt and loads at a retry once complete."""
    shutil.rmtree(repo / "toy" / "2")
    with LocalServer(config(repo), file_system_poll_wait_seconds=0.05, max_num_load_retries=5,
                     load_retry_interval_micros=400_000) as s:
        (repo / "toy" / "2").mkdir()  # appears empty, as a copy in progress does
        wait_for(lambda: _attempt_times(s.log_text(), 2), what="the first attempt to fail")
        for item in (repo.parent / "pristine2").iterdir():
            dest = repo / "toy" / "2" / item.name
            shutil.copytree(item, dest) if item.is_dir() else shutil.copy2(item, dest)
        wait_for(lambda: states(s).get(2) == "AVAILABLE", what="the retry to load version 2")
        assert states(s)[1] == "END"


# ---------------------------------------------------------------------------------------------
# start-up (model_servers/server_core.cc, core/load_servables_fast.cc, model_servers/main.cc)


def test_start_up_exits_when_the_latest_version_fails_every_attempt(repo, capsys):
    """`python -m builder serve`: the latest aspired version of every model must load; after
    its retries the server exits 1 with TF Serving's "Failed to start server" line."""
    shutil.rmtree(repo / "toy" / "2")
    break_version(repo, 2)
    cfg = config(repo)
    code = cli_main(["serve", "--model_config_file", str(cfg), "--port", "0", "--rest_api_port", "0",
                     "--max_num_load_retries", "1", "--load_retry_interval_micros", "50000"])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: Failed to start server. Error: UNKNOWN: 1 servable(s) did not become "
                          "available: {{{name: toy version: 2} due to error: INVALID_ARGUMENT: Failed to load "
                          "SavedModel")
    assert err.endswith("}, }")


def test_start_up_does_not_wait_for_an_older_version(repo):
    """Only the latest aspired version gates start-up: a broken v1 beside a good v2 under the
    `all` policy starts (v1 ends in error after its attempts, v2 serves)."""
    shutil.rmtree(repo / "toy" / "1")
    break_version(repo, 1)
    with LocalServer(config(repo, policy="all"), max_num_load_retries=0) as s, RestClient(s.rest_url) as rest:
        assert approx(answer(rest), served_by(2))
        assert states(s) == {2: "AVAILABLE", 1: "END"}


def test_start_up_waits_for_a_model_with_no_version_yet(repo):
    """ServerCore waits (no timeout) for every model's first version: ports open only once it
    loads; a model whose base path is missing fails every poll, holding back the others too
    (file_system_storage_path_source.cc PollFileSystemForConfig stops at the first error)."""
    cfg = write_models_config(repo / "models.config", [{"name": "toy", "base_path": repo / "toy"},
                                                       {"name": "later", "base_path": repo / "later"}])
    s = LocalServer(cfg, file_system_poll_wait_seconds=0.05)
    errors: list[BaseException] = []
    t = threading.Thread(target=lambda: _start(s, errors))
    t.start()
    try:
        wait_for(lambda: "Could not find base path" in s.log_text(), what="the poll error")
        time.sleep(0.3)
        assert t.is_alive() and s._grpc is None and states(s) == {}  # toy held back as well
        (repo / "later").mkdir()
        time.sleep(0.3)
        assert t.is_alive() and states(s) == {2: "AVAILABLE"}  # toy loads; "later" has no version
        assert "Waiting for model later: no version of later found" in s.log_text()
        shutil.copytree(repo / "toy" / "1", repo / "later" / "7")
        t.join(30)
        assert not t.is_alive() and not errors
        with RestClient(s.rest_url) as rest:
            assert rest.status("later")["model_version_status"][0]["version"] == "7"
    finally:
        s.stop()
        t.join(10)


def test_a_reload_does_not_wait_for_a_model_without_versions_but_wait_until_ready_does(repo):
    (repo / "later").mkdir()
    with LocalServer(config(repo), file_system_poll_wait_seconds=0.1) as s, GrpcClient(s.grpc_target) as client:
        later = f'config {{ name: "later" base_path: "{repo / "later"}" model_platform: "tensorflow" }}'
        assert client.reload_config(config_text(repo)[:-2] + later + " }").status.error_code == 0
        assert "model later has no version yet: not waiting for it" in s.log_text()
        with pytest.raises(ServingError, match=r"no servable versions on disk for model\(s\) later after 1 s"):
            s.wait_until_ready(1.0)
        shutil.copytree(repo.parent / "pristine2", repo / "later" / "3")
        s.wait_until_ready(20)
        assert states(s, "later") == {3: "AVAILABLE"}


def _start(s: LocalServer, errors: list[BaseException]) -> None:
    try:
        s.start()
    except BaseException as e:  # noqa: BLE001 - reported to the test thread
        errors.append(e)


# ---------------------------------------------------------------------------------------------
# warmup (servables/tensorflow/saved_model_warmup_util.cc, saved_model_warmup.cc)


def _warmup_file(version_dir: Path, records: list[bytes]) -> None:
    import tensorflow as tf

    path = version_dir / lifecycle.WARMUP_FILE
    with tf.io.TFRecordWriter(str(path)) as w:
        for r in records:
            w.write(r)


def _predict_record(inputs: dict) -> bytes:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    req = predict_pb2.PredictRequest()
    for k, v in inputs.items():
        req.inputs[k].CopyFrom(tf.make_tensor_proto(v))
    return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=req)).SerializeToString()


@pytest.mark.parametrize("kind", ["session_run_log", "predict_streamed_log"])
def test_warmup_log_types_tf_serving_rejects_fail_the_load(repo, kind):
    from tensorflow_serving.apis import prediction_log_pb2

    log = prediction_log_pb2.PredictionLog()
    getattr(log, kind).SetInParent()
    _warmup_file(repo / "toy" / "2", [_predict_record({"x": sample_inputs(1)}), log.SerializeToString()])
    with pytest.raises(ServerStartError, match=rf"record 1: Unsupported log_type for warmup: {kind}"):
        LocalServer(config(repo), max_num_load_retries=0).start()


def test_a_failing_warmup_of_a_new_version_keeps_the_old_one(repo):
    """A bad record (or > 1000 records) fails the *load*, so it is one more failed new version:
    the old one keeps serving."""
    with LocalServer(config(repo, policy="specific", versions=[1]), file_system_poll_wait_seconds=60,
                     max_num_load_retries=0) as s, GrpcClient(s.grpc_target) as client:
        _warmup_file(repo / "toy" / "2", [_predict_record({"x": sample_inputs(1)})] * 1001)
        client.reload_config(config_text(repo, "model_version_policy { specific { versions: 1 versions: 2 } }"))
        assert states(s) == {1: "AVAILABLE", 2: "END"}
        assert "Number of warmup records exceeds the maximum (1000)" in s.manager.status("toy", 2)[0][1].error_message


# ---------------------------------------------------------------------------------------------
# version directories (sources/storage_path/file_system_storage_path_source.cc)


def _duplicate_repo(repo: Path) -> None:
    """toy/1 holds version 1's model, toy/01 holds version 2's: answers tell which one loaded."""
    os.rename(repo / "toy" / "2", repo / "toy" / "01")
    (repo / "toy" / "-1").mkdir()


def test_1_and_01_latest_policy_loads_1_with_tf_servings_warning(repo):
    _duplicate_repo(repo)
    with LocalServer(config(repo), file_system_poll_wait_seconds=0.05) as s, RestClient(s.rest_url) as rest:
        assert approx(answer(rest), served_by(1))
        time.sleep(0.3)  # several polls: the warning is logged once
        log = s.log_text()
        assert log.count("Duplicate version directories detected. Version 1 will be loaded from 1, 01 will be "
                         "ignored.") == 1
        assert "TF Serving 2.17 loads this directory as version -1" in log


def test_1_and_01_all_policy_loads_the_first_name_without_the_duplicate_warning(repo):
    """AspireAllVersions emits both; the manager keeps the first (01, in byte order)."""
    _duplicate_repo(repo)
    with LocalServer(config(repo, policy="all"), file_system_poll_wait_seconds=0) as s, \
            RestClient(s.rest_url) as rest:
        assert approx(answer(rest), served_by(2))  # loaded from 01
        assert states(s) == {1: "AVAILABLE"}
        assert "Duplicate version directories detected" not in s.log_text()


# ---------------------------------------------------------------------------------------------
# poll intervals (file_system_storage_path_source.cc SetAspiredVersionsCallback, server.cc)


def test_poll_interval_0_lists_base_paths_once(repo):
    """--file_system_poll_wait_seconds 0 polls exactly once: a version added later never loads,
    and a model added by a reload never loads either (TF Serving's reload would block,
    serving#1519; here it fails at once with that reason)."""
    shutil.rmtree(repo / "toy" / "2")
    with LocalServer(config(repo), file_system_poll_wait_seconds=0) as s, GrpcClient(s.grpc_target) as client:
        shutil.copytree(repo.parent / "pristine2", repo / "toy" / "2")
        time.sleep(1.0)
        assert states(s) == {1: "AVAILABLE"}
        other = f'config {{ name: "other" base_path: "{repo / "toy"}" model_platform: "tensorflow" }}'
        with pytest.raises(grpc.RpcError) as err:
            client.reload_config(config_text(repo)[:-2] + other + " }")
        assert "lists no base path after start-up" in err.value.details() and "serving#1519" in err.value.details()
        assert states(s, "other") == {}


def test_negative_poll_interval_never_lists_so_start_up_waits_until_stopped(repo):
    s = LocalServer(config(repo), file_system_poll_wait_seconds=-1)
    errors: list[BaseException] = []
    t = threading.Thread(target=lambda: _start(s, errors))
    t.start()
    wait_for(lambda: "base paths are never listed" in s.log_text(), what="the warning")
    time.sleep(0.3)
    assert t.is_alive() and states(s) == {}
    s.stop()
    t.join(10)
    assert not t.is_alive() and len(errors) == 1 and isinstance(errors[0], ServingError)
    assert "stopped before start-up finished" in str(errors[0])


def test_config_file_is_reread_only_for_a_positive_interval(repo):
    cfg = config(repo)
    with LocalServer(cfg, model_config_file_poll_wait_seconds=0, file_system_poll_wait_seconds=60) as s:
        write_models_config(cfg, [{"name": "toy", "base_path": repo / "toy", "policy": "all"}])
        time.sleep(0.5)
        assert states(s) == {2: "AVAILABLE"}


# ---------------------------------------------------------------------------------------------
# flags


def test_life_cycle_flags_have_tf_servings_names_and_defaults(repo, capsys):
    from builder.serve.handles import ContainerServer

    s = LocalServer(config(repo))
    assert s.lifecycle_flags.allow_version_labels_for_unavailable_models is False
    assert lifecycle.load_attempt_offsets(s.lifecycle_flags) == [0, 60, 120, 180, 240, 300]
    assert cli_main(["serve", "--model_config_file", str(config(repo)), "--max_num_load_retries", "-1"]) == 2
    assert "--max_num_load_retries" in capsys.readouterr().err
    assert cli_main(["serve", "--model_config_file", str(config(repo)),
                     "--allow_version_labels_for_unavailable_models", "maybe"]) == 2
    assert "--allow_version_labels_for_unavailable_models" in capsys.readouterr().err
    with_flag, default = (ContainerServer(repo, config(repo), allow_version_labels_for_unavailable_models=True),
                          ContainerServer(repo, config(repo)))
    assert "--allow_version_labels_for_unavailable_models=true" in with_flag.flags  # as the serving image
    assert not any("allow_version_labels" in f for f in default.flags)  # TF Serving's default
    with_flag.stop()  # no container was started: removes the rewritten config only
    default.stop()

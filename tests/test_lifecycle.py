"""TF Serving's life-cycle rules (builder.config.lifecycle), each against the behaviour its 2.17.0
source defines (file names in the test docstrings are under tensorflow_serving/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.config import lifecycle
from builder.config.lifecycle import ServerFlags, VersionPolicy
from builder.core import layout

LATEST = VersionPolicy()


def _dirs(base: Path, *names: str) -> Path:
    for n in names:
        (base / n).mkdir(parents=True)
    return base


def _config(entries: list[dict]):
    from tensorflow_serving.config import model_server_config_pb2

    cfg = model_server_config_pb2.ModelServerConfig()
    for e in entries:
        c = cfg.model_config_list.config.add()
        c.name, c.base_path, c.model_platform = e["name"], str(e["base_path"]), "tensorflow"
        for k, v in e.get("labels", {}).items():
            c.version_labels[k] = v
        if "latest" in e:
            c.model_version_policy.latest.num_versions = e["latest"]
        if "specific" in e:
            c.model_version_policy.specific.versions.extend(e["specific"])
    return cfg


def test_version_names_parse_as_safe_strto64():
    """file_system_storage_path_source.cc ParseVersionNumber -> strings::safe_strto64 at 2.17.0;
    lifecycle uses layout's one rule (non-negative), and warns about the negative names TF
    Serving would load."""
    assert not hasattr(lifecycle, "parse_version_name")  # one rule: builder.core.layout's
    assert layout.tf_serving_version_number("-3") == -3  # what TF Serving 2.17 reads
    assert layout.tf_serving_version_number(" 7 ") == 7
    assert layout.tf_serving_version_number("+1") is None  # safe_strto64 takes no '+'
    assert layout.parse_version_name("-3") is None  # ... which the builder ignores


def test_negative_version_names_are_ignored_with_a_warning(tmp_path):
    base = _dirs(tmp_path / "m", "-1", "2", "+3", " 4")
    disc = lifecycle.discover_versions(base, LATEST, "m")
    assert [(d.version, d.name) for d in disc.candidates] == [(2, "2"), (4, " 4")]
    assert len(disc.warnings) == 1 and "loads this directory as version -1" in disc.warnings[0]


def test_duplicate_1_and_01_one_is_ignored_with_tf_servings_warning(tmp_path):
    base = _dirs(tmp_path / "m", "1", "01", "2")
    disc = lifecycle.discover_versions(base, LATEST, "m")
    assert [(d.version, d.name) for d in disc.candidates] == [(1, "1"), (2, "2")]
    assert [d.name for d in disc.ignored] == ["01"]
    assert disc.warnings == ["Duplicate version directories detected. Version 1 will be loaded from 1, "
                             "01 will be ignored."]


def test_duplicates_under_all_policy_are_both_aspired_without_warning(tmp_path):
    base = _dirs(tmp_path / "m", "1", "01")
    disc = lifecycle.discover_versions(base, VersionPolicy("all"), "m")
    assert disc.warnings == []
    chosen, _ = lifecycle.aspired(VersionPolicy("all"), disc, "m")
    assert sorted(d.name for d in chosen) == ["01", "1"] and {d.version for d in chosen} == {1}


def test_specific_fast_path_lists_nothing_when_every_version_exists_by_its_plain_name(tmp_path):
    base = _dirs(tmp_path / "m", "1", "01", "3")
    pol = VersionPolicy("specific", versions=(1,))
    disc = lifecycle.discover_versions(base, pol, "m")
    assert disc.warnings == [] and [d.name for d in disc.candidates] == ["1"]
    # a requested version that is missing falls back to the general path: warning + not found
    pol = VersionPolicy("specific", versions=(1, 5))
    disc = lifecycle.discover_versions(base, pol, "m")
    chosen, warns = lifecycle.aspired(pol, disc, "m")
    assert [d.version for d in chosen] == [1]
    assert any("Duplicate version directories" in w for w in disc.warnings)
    assert any("Version 5 of servable m" in w and "was not found in the file system" in w for w in warns)


def test_a_file_whose_name_parses_is_a_version_and_fails_to_load(tmp_path):
    base = _dirs(tmp_path / "m", "1")
    (base / "2").write_text("not a SavedModel")
    plan = lifecycle.startup_plan(_config([{"name": "m", "base_path": base}]))
    assert plan.would_exit and "m version 2" in plan.reasons[0] and "not a directory" in plan.reasons[0]


def test_latest_all_specific_choose_like_the_source(tmp_path):
    base = _dirs(tmp_path / "m", "1", "2", "3", "x")
    disc = lifecycle.discover_versions(base, LATEST, "m")
    pick = lambda pol: [d.version for d in lifecycle.aspired(pol, disc, "m")[0]]  # noqa: E731
    assert pick(VersionPolicy("latest", 2)) == [2, 3]
    assert pick(VersionPolicy("latest", 0)) == [3]  # std::max(num_versions, 1)
    assert pick(VersionPolicy("all")) == [1, 2, 3]
    assert pick(VersionPolicy("specific", versions=(1, 3))) == [1, 3]
    _, warns = lifecycle.aspired(VersionPolicy("specific"), disc, "m")
    assert warns == ["No specific versions requested for servable m."]


def test_poll_intervals():
    """0 polls once, negative never (file_system_storage_path_source.cc); the config file is
    re-read only for a positive interval (server.cc)."""
    assert lifecycle.poll_mode(0) == "once"
    assert lifecycle.poll_mode(30) == "periodic"
    assert lifecycle.poll_mode(-1) == "never"
    assert lifecycle.config_poll_mode(0) == "once" and lifecycle.config_poll_mode(-5) == "once"
    assert lifecycle.config_poll_mode(60) == "periodic"


def test_negative_file_system_poll_makes_startup_wait_forever(tmp_path):
    base = _dirs(tmp_path / "m", "1")
    plan = lifecycle.startup_plan(_config([{"name": "m", "base_path": base}]),
                                  ServerFlags(file_system_poll_wait_seconds=-1))
    assert plan.would_hang and not plan.starts


def test_load_retries_follow_tf_serving_flags():
    """util/retrier.cc: max_num_load_retries + 1 attempts, load_retry_interval_micros apart."""
    assert lifecycle.load_attempt_offsets() == [0, 60, 120, 180, 240, 300]
    assert lifecycle.load_attempt_offsets(ServerFlags(max_num_load_retries=0)) == [0]
    assert lifecycle.load_attempt_offsets(ServerFlags(max_num_load_retries=2,
                                                      load_retry_interval_micros=-1)) == [0, 0, 0]


def test_failed_new_version_keeps_the_old_one_serving():
    """availability_preserving_policy.cc: v1 is unloaded only once an aspired version is ready."""
    t = lifecycle.transition([1], [2], lambda v: "boom" if v == 2 else None)
    assert t.serving == [1] and t.failed == [2] and t.unloaded == []
    assert "failed 6 time(s) over 300 s, not retried while on disk" in t.events[0]
    t = lifecycle.transition([1], [2], lambda v: None)
    assert t.serving == [2] and t.unloaded == [1]
    assert t.events == ["load 2: AVAILABLE", "unload 1"]  # load first, then unload


def test_next_action_unloads_lowest_unaspired_when_two_serve():
    s = lifecycle.VersionState
    assert lifecycle.next_action({1: s(False, "ready"), 2: s(False, "ready"), 3: s(True, "new")}) == ("unload", 1)
    assert lifecycle.next_action({1: s(False, "ready"), 3: s(True, "new")}) == ("load", 3)
    assert lifecycle.next_action({1: s(False, "ready"), 3: s(True, "error")}) is None


def test_labels_are_refused_for_unavailable_versions_unless_the_flag():
    """server_core.cc UpdateModelVersionLabelMap."""
    msg = "Request to assign label to version 2 of model m, which is not currently available for inference"
    assert lifecycle.check_labels({"stable": 2}, [], False, None, "m") == [msg]
    assert lifecycle.check_labels({"stable": 2}, [], True, None, "m") == []
    assert lifecycle.check_labels({"stable": 2}, [2], False, None, "m") == []
    # with the flag, an existing label may keep its version but not move to an unavailable one
    assert lifecycle.check_labels({"stable": 2}, [1], True, {"stable": 2}, "m") == []
    assert lifecycle.check_labels({"stable": 2}, [1], True, {"stable": 1}, "m") == [msg]
    assert lifecycle.check_labels({"stable": 2}, [1, 2], True, {"stable": 1}, "m") == []


def test_label_in_first_config_exits_before_any_model_loads(tmp_path):
    base = _dirs(tmp_path / "m", "1")
    cfg = _config([{"name": "m", "base_path": base, "labels": {"stable": 1}}])
    plan = lifecycle.startup_plan(cfg)
    assert plan.would_exit and plan.loads == []  # nothing loaded: labels come first
    assert "which is not currently available for inference" in plan.reasons[0]
    plan = lifecycle.startup_plan(cfg, ServerFlags(allow_version_labels_for_unavailable_models=True))
    assert plan.starts and [(ld.model, ld.version, ld.ok) for ld in plan.loads] == [("m", 1, True)]


def test_startup_waits_for_latest_of_every_model_and_exits_on_its_failure(tmp_path):
    a = _dirs(tmp_path / "a", "1", "2")
    b = _dirs(tmp_path / "b", "1")
    cfg = _config([{"name": "a", "base_path": a, "latest": 2}, {"name": "b", "base_path": b}])
    assert lifecycle.startup_plan(cfg).starts
    # an older aspired version failing does not stop start-up; the latest failing does
    assert lifecycle.startup_plan(cfg, load_errors={("a", 1): "bad"}).starts
    plan = lifecycle.startup_plan(cfg, load_errors={("b", 1): "bad warmup"})
    assert plan.would_exit and "model b version 1 did not become available after 6 attempt(s) over 300 s" \
        in plan.reasons[0]
    # a model without versions: start-up never completes
    empty = _config([{"name": "c", "base_path": tmp_path / "missing"}])
    plan = lifecycle.startup_plan(empty)
    assert plan.would_hang and "Could not find base path" in plan.reasons[0]


def test_config_validation_exits(tmp_path):
    cfg = _config([{"name": "m", "base_path": "relative/m"}, {"name": "m", "base_path": "/x"}])
    plan = lifecycle.startup_plan(cfg)
    assert plan.would_exit
    assert "Expected model m to have an absolute path or URI; got base_path()=relative/m" in plan.reasons
    assert "Illegal to list model m multiple times in config list" in plan.reasons


def _warmup(vdir: Path, logs: list) -> None:
    from builder.core import artifact

    artifact.write_tfrecords(vdir / "assets.extra" / "tf_serving_warmup_requests",
                             [x if isinstance(x, bytes) else x.SerializeToString() for x in logs])


def _predict_log(inputs: dict, key: str = "serving_default"):
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.model_spec.signature_name = key
    for k, v in inputs.items():
        log.predict_log.request.inputs[k].CopyFrom(tf.make_tensor_proto(np.asarray(v, np.float32)))
    return log


def test_warmup_rules(tmp_path):
    """saved_model_warmup_util.cc / saved_model_warmup.cc."""
    from tensorflow_serving.apis import prediction_log_pb2

    sigs = {"serving_default": ["x"]}
    v = tmp_path / "1"
    v.mkdir()
    assert lifecycle.check_warmup(v, sigs) == []  # no file: warmup is optional
    _warmup(v, [_predict_log({"x": [[1.0]]})] * 1000)
    assert lifecycle.check_warmup(v, sigs) == []
    _warmup(v, [_predict_log({"x": [[1.0]]})] * 1001)
    assert "Number of warmup records exceeds the maximum (1000)" in lifecycle.check_warmup(v, sigs)[0]
    session_run = prediction_log_pb2.PredictionLog()
    session_run.session_run_log.request.feed.add()
    _warmup(v, [_predict_log({"x": [[1.0]]}), session_run])
    assert lifecycle.check_warmup(v, sigs) == [f"{v / lifecycle.WARMUP_FILE}: record 1: Unsupported "
                                               "log_type for warmup: session_run_log"]
    streamed = prediction_log_pb2.PredictionLog()
    streamed.predict_streamed_log.SetInParent()
    _warmup(v, [streamed])
    assert "predict_streamed_log" in lifecycle.check_warmup(v, sigs)[0]
    _warmup(v, [_predict_log({"images": [[1.0]]})])
    assert "do not match signature 'serving_default' inputs ['x']" in lifecycle.check_warmup(v, sigs)[0]
    _warmup(v, [b"\xff\xff not a proto"])
    assert "Failed to parse warmup record" in lifecycle.check_warmup(v, sigs)[0]
    path = v / lifecycle.WARMUP_FILE
    _warmup(v, [_predict_log({"x": [[1.0]]})])
    path.write_bytes(path.read_bytes()[:-3])
    assert "TFRecord format" in lifecycle.check_warmup(v, sigs)[0]


def test_server_flags_parse_and_project_flags_allow_labels():
    from builder.deploy import image

    f = ServerFlags.from_args(["--max_num_load_retries=2", "--enable_batching", "--port=1",
                               "--load_retry_interval_micros=5"])
    assert (f.max_num_load_retries, f.enable_batching, f.load_retry_interval_micros) == (2, True, 5)
    assert ServerFlags().allow_version_labels_for_unavailable_models is False  # TF Serving default
    project = ServerFlags.from_args(image.server_flags())
    assert project.allow_version_labels_for_unavailable_models is True
    assert project.enable_batching is True and project.enable_model_warmup is True


@pytest.mark.parametrize("policy", [LATEST, VersionPolicy("all")])
def test_missing_base_path_aspires_nothing(tmp_path, policy):
    disc = lifecycle.discover_versions(tmp_path / "nope", policy, "m")
    assert disc.error == f"Could not find base path {tmp_path / 'nope'} for servable m"
    assert lifecycle.aspired(policy, disc, "m") == ([], [])

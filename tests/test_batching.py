"""Batching/monitoring companions and latency budgets: what is written parses with TF Serving's
schema, bad input raises a one-line error and leaves nothing half-written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder.config import companions
from builder.core.errors import ConfigError, InputError

PROJECT = Path(__file__).resolve().parent.parent
SERVING_CONFIGS = PROJECT / "serving_configs"


def test_allowed_batch_sizes_are_the_built_sizes():
    text = companions.batching_parameters_text([100, 1, 8, 8])
    msg = companions.parse_batching_parameters(text)
    assert list(msg.allowed_batch_sizes) == [1, 8, 100]
    assert msg.max_batch_size.value == 100
    assert msg.batch_timeout_micros.value == companions.DEFAULT_BATCH_TIMEOUT_MICROS
    assert msg.num_batch_threads.value == companions.DEFAULT_NUM_BATCH_THREADS
    assert msg.max_enqueued_batches.value == companions.DEFAULT_MAX_ENQUEUED_BATCHES
    assert msg.pad_variable_length_inputs is False


def test_schema_matches_tf_serving_field_numbers():
    """Wire format pins the field numbers of TF Serving 2.17.1's session_bundle_config.proto and
    monitoring_config.proto (a text-only check would not notice a renumbered field)."""
    bp = companions.batching_parameters_class()()
    bp.max_batch_size.value = 8  # field 1, Int64Value{value(1)=8}
    bp.allowed_batch_sizes.append(8)  # field 6, packed int64
    bp.max_execution_batch_size.value = 3  # field 9
    assert bp.SerializeToString() == b"\n\x02\x08\x08" + b"2\x01\x08" + b"J\x02\x08\x03"
    assert type(bp).DESCRIPTOR.full_name == "tensorflow.serving.BatchingParameters"
    mc = companions.monitoring_config_class()()
    mc.prometheus_config.enable = True
    mc.prometheus_config.path = "/m"
    assert mc.SerializeToString() == b"\n\x06\x08\x01\x12\x02/m"
    assert type(mc).DESCRIPTOR.full_name == "tensorflow.serving.MonitoringConfig"


@pytest.mark.parametrize(("text", "fragment"), [
    ("max_batch_size { value: 8 }\nallowed_batch_sizes: 8\nallowed_batch_sizes: 1\n", "strictly increasing"),
    ("max_batch_size { value: 16 }\nallowed_batch_sizes: 1\nallowed_batch_sizes: 8\n", "must equal max_batch_size"),
    ("allowed_batch_sizes: 1\n", "must equal max_batch_size (unset)"),
    ("num_batch_threads { value: 0 }\n", "num_batch_threads must be >= 1"),
    ("max_batch_size: 8\n", "not a tensorflow.serving.BatchingParameters text proto"),
    ("bogus_field: 1\n", "not a tensorflow.serving.BatchingParameters text proto"),
])
def test_batching_parse_errors_name_the_file(text, fragment):
    with pytest.raises(ConfigError) as err:
        companions.parse_batching_parameters(text, "/x/batching_parameters.txt")
    msg = str(err.value)
    assert msg.startswith("/x/batching_parameters.txt: ")
    assert fragment in msg
    assert "\n" not in msg


def test_monitoring_config_round_trip_and_errors():
    msg = companions.parse_monitoring_config(companions.monitoring_config_text("/metrics"))
    assert msg.prometheus_config.enable is True
    assert msg.prometheus_config.path == "/metrics"
    with pytest.raises(ConfigError, match="must start with '/'"):
        companions.monitoring_config_text("metrics")
    with pytest.raises(ConfigError, match="MonitoringConfig text proto"):
        companions.parse_monitoring_config("prometheus_config { enabled: true }", "m.config")


def test_write_companions_writes_both_files(tmp_path):
    out = tmp_path / "serving"
    paths = companions.write_companions(out, (8, 1), num_batch_threads=2)
    assert paths == {"batching": out / "batching_parameters.txt", "monitoring": out / "monitoring.config"}
    bp = companions.parse_batching_parameters(paths["batching"].read_text())
    assert list(bp.allowed_batch_sizes) == [1, 8] and bp.num_batch_threads.value == 2
    assert companions.parse_monitoring_config(paths["monitoring"].read_text()).prometheus_config.enable
    assert sorted(p.name for p in out.iterdir()) == ["batching_parameters.txt", "monitoring.config"]


@pytest.mark.parametrize(("kwargs", "fragment"), [
    (dict(batch_sizes=[]), "no batch sizes"),
    (dict(batch_sizes=[0, 8]), "must all be positive"),
    (dict(batch_sizes=[1], num_batch_threads=0), "--num_batch_threads 0 is out of range"),
    (dict(batch_sizes=[1], prometheus_path="metrics"), "must start with '/'"),
])
def test_bad_arguments_leave_existing_files_untouched(tmp_path, kwargs, fragment):
    companions.write_companions(tmp_path, [1, 8])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ConfigError) as err:
        companions.write_companions(tmp_path, **kwargs)
    assert fragment in str(err.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_out_dir_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "serving"
    f.write_text("x")
    with pytest.raises(InputError, match="is a file, not a directory"):
        companions.write_companions(f, [1])
    assert f.read_text() == "x"


def test_batch_sizes_from_repo_reads_build_info(tmp_path):
    for name, v, sizes in (("a", 1, [1, 8]), ("a", 2, [1, 100]), ("b", 1, [4])):
        d = tmp_path / name / str(v) / "assets.extra"
        d.mkdir(parents=True)
        (d / "build_info.json").write_text(json.dumps({"batch_sizes": sizes}))
    (tmp_path / "a" / ".staging-x" / "assets.extra").mkdir(parents=True)  # ignored, not numeric
    (tmp_path / "a" / ".staging-x" / "assets.extra" / "build_info.json").write_text('{"batch_sizes": [999]}')
    assert companions.batch_sizes_from_repo(tmp_path) == [1, 4, 8, 100]
    (tmp_path / "b" / "1" / "assets.extra" / "build_info.json").write_text("{not json")
    with pytest.raises(InputError, match=r"b/1/assets.extra/build_info.json: unreadable"):
        companions.batch_sizes_from_repo(tmp_path)


def test_project_defaults_parse_and_match_the_writer():
    bp_text = (SERVING_CONFIGS / "batching_parameters.txt").read_text()
    mc_text = (SERVING_CONFIGS / "monitoring.config").read_text()
    assert bp_text == companions.batching_parameters_text([1, 8, 100])
    assert mc_text == companions.monitoring_config_text()
    assert list(companions.parse_batching_parameters(bp_text).allowed_batch_sizes) == [1, 8, 100]


def test_project_latency_budget_covers_the_integration_suite():
    budget = companions.load_latency_budget(SERVING_CONFIGS / "latency_budget.json")
    for backend in ("local", "container-cpu", "container-gpu"):
        assert budget.cold_start_seconds(backend) > 0
        for bs in (1, 8):
            b = budget.warm(backend, "toy", bs)
            assert b is not None and 0 < b.p50_ms <= b.p99_ms
    assert budget.warm("local", "toy", 3) is None
    with pytest.raises(ConfigError, match="no budget for backend 'tpu'"):
        budget.cold_start_seconds("tpu")


@pytest.mark.parametrize(("data", "fragment"), [
    ("{", "not valid JSON"),
    ({"backends": {}}, "non-empty \"backends\""),
    ({"backends": {"local": {"cold_start_seconds": -1}}}, "cold_start_seconds must be a positive number"),
    ({"backends": {"local": {"cold_start_seconds": 5, "models": {"m": {"x": {"p50_ms": 1, "p99_ms": 2}}}}}},
     "batch size keys must be positive integers"),
    ({"backends": {"local": {"cold_start_seconds": 5, "models": {"m": {"1": {"p50_ms": 3, "p99_ms": 2}}}}}},
     "0 < p50_ms <= p99_ms"),
    ({"backends": {"local": {"cold_start_seconds": 5, "models": {"m": {"1": {"p50_ms": 3}}}}}},
     "needs numeric p50_ms and p99_ms"),
])
def test_latency_budget_validation(tmp_path, data, fragment):
    p = tmp_path / "budget.json"
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    with pytest.raises(ConfigError) as err:
        companions.load_latency_budget(p)
    assert str(err.value).startswith(str(p))
    assert fragment in str(err.value)


def test_latency_budget_wildcard_model(tmp_path):
    p = tmp_path / "b.json"
    p.write_text(json.dumps({"backends": {"local": {"cold_start_seconds": 5, "models": {
        "*": {"1": {"p50_ms": 1, "p99_ms": 2}}, "m": {"1": {"p50_ms": 3, "p99_ms": 4}}}}}}))
    budget = companions.load_latency_budget(p)
    assert budget.warm("local", "other", 1) == companions.Budget(1.0, 2.0)
    assert budget.warm("local", "m", 1) == companions.Budget(3.0, 4.0)
    with pytest.raises(InputError, match="not found"):
        companions.load_latency_budget(tmp_path / "missing.json")

"""Companion files for a model repository: server-side batching, Prometheus monitoring, budgets.

Why this exists: an artefact is exported and warmed for a fixed set of batch sizes (and, for
TF-TRT, has engines pre-built for exactly those shapes). If the server's batcher forms batches of
any other size, TensorFlow meets a new shape at request time: a cold graph path on CPU, a fresh
TensorRT engine build (seconds to minutes) on GPU. ``allowed_batch_sizes`` makes the batcher pad
every batch up to one of the warmed sizes, so the file we write here ties the serving side to
what the builder actually built.

Both files are TF Serving text protos (``--batching_parameters_file``, ``--monitoring_config_file``)
and are parsed back with the protos' own schema before they are written, so a file this module
writes is one ``tensorflow_model_server`` accepts.

The ``tensorflow-serving-api`` wheel ships neither ``session_bundle_config_pb2`` nor
``monitoring_config_pb2``; when they are not importable the two message types are declared here
field-for-field from TF Serving 2.17.1 (``tensorflow_serving/servables/tensorflow/
session_bundle_config.proto`` message ``BatchingParameters`` and ``tensorflow_serving/config/
monitoring_config.proto``) in a private descriptor pool, under the same full names, so the text
format is checked against the same schema.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from builder.core.errors import ConfigError, InputError
from builder.core.layout import atomic_write_text

BATCHING_FILE = "batching_parameters.txt"
MONITORING_FILE = "monitoring.config"
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"  # TF Serving's PrometheusExporter default

# Defaults, with the reason for each (serving_configs/README.md explains them for users).
DEFAULT_BATCH_TIMEOUT_MICROS = 1000  # 1 ms: small added latency, lets concurrent calls merge
DEFAULT_NUM_BATCH_THREADS = 4  # roughly the serving host's cores for one model
DEFAULT_MAX_ENQUEUED_BATCHES = 100  # bounded queue: overload answers UNAVAILABLE, not minutes late


@lru_cache(maxsize=1)
def _message_classes() -> tuple[type, type]:
    """(BatchingParameters, MonitoringConfig) message classes: the official generated modules if
    installed, otherwise the same schema declared in a private pool."""
    try:  # pragma: no cover - only present in builds of TF Serving's own Python protos
        from tensorflow_serving.config import monitoring_config_pb2  # type: ignore
        from tensorflow_serving.servables.tensorflow import (  # type: ignore
            session_bundle_config_pb2,
        )

        return session_bundle_config_pb2.BatchingParameters, monitoring_config_pb2.MonitoringConfig
    except ImportError:
        pass

    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    F = descriptor_pb2.FieldDescriptorProto

    def field(msg: Any, name: str, number: int, ftype: int, type_name: str = "",
              repeated: bool = False) -> None:
        f = msg.field.add()
        f.name, f.number, f.type = name, number, ftype
        f.label = F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL
        if type_name:
            f.type_name = type_name

    fdp = descriptor_pb2.FileDescriptorProto(
        name="tfs_builder/serving_companions.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    bp = fdp.message_type.add(name="BatchingParameters")
    i64 = ".google.protobuf.Int64Value"
    field(bp, "max_batch_size", 1, F.TYPE_MESSAGE, i64)
    field(bp, "batch_timeout_micros", 2, F.TYPE_MESSAGE, i64)
    field(bp, "max_enqueued_batches", 3, F.TYPE_MESSAGE, i64)
    field(bp, "num_batch_threads", 4, F.TYPE_MESSAGE, i64)
    field(bp, "thread_pool_name", 5, F.TYPE_MESSAGE, ".google.protobuf.StringValue")
    field(bp, "allowed_batch_sizes", 6, F.TYPE_INT64, repeated=True)
    field(bp, "pad_variable_length_inputs", 7, F.TYPE_BOOL)
    field(bp, "enable_large_batch_splitting", 8, F.TYPE_MESSAGE, ".google.protobuf.BoolValue")
    field(bp, "max_execution_batch_size", 9, F.TYPE_MESSAGE, i64)
    pc = fdp.message_type.add(name="PrometheusConfig")
    field(pc, "enable", 1, F.TYPE_BOOL)
    field(pc, "path", 2, F.TYPE_STRING)
    mc = fdp.message_type.add(name="MonitoringConfig")
    field(mc, "prometheus_config", 1, F.TYPE_MESSAGE, ".tensorflow.serving.PrometheusConfig")
    pool.Add(fdp)
    get = message_factory.GetMessageClass
    return (
        get(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")),
        get(pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig")),
    )


def batching_parameters_class() -> type:
    """The ``tensorflow.serving.BatchingParameters`` message class (official or re-declared)."""
    return _message_classes()[0]


def monitoring_config_class() -> type:
    """The ``tensorflow.serving.MonitoringConfig`` message class (official or re-declared)."""
    return _message_classes()[1]


def parse_batching_parameters(text: str, source: str = BATCHING_FILE) -> Any:
    """Parse a ``--batching_parameters_file`` and apply the checks TF Serving makes at load time
    (allowed sizes increasing, last one == max_batch_size), naming ``source`` on failure."""
    msg = _parse_text_proto(text, batching_parameters_class()(), source, "BatchingParameters")
    sizes = list(msg.allowed_batch_sizes)
    if sizes:
        if any(b <= a for a, b in zip(sizes, sizes[1:], strict=False)) or sizes[0] <= 0:
            raise ConfigError(
                f"{source}: allowed_batch_sizes {sizes} must be positive and strictly increasing "
                "(TF Serving refuses the model otherwise): sort them and drop duplicates"
            )
        if not msg.HasField("max_batch_size") or msg.max_batch_size.value != sizes[-1]:
            got = msg.max_batch_size.value if msg.HasField("max_batch_size") else "unset"
            raise ConfigError(
                f"{source}: the last allowed_batch_sizes entry ({sizes[-1]}) must equal "
                f"max_batch_size ({got}): set max_batch_size {{ value: {sizes[-1]} }}"
            )
    for name in ("num_batch_threads", "max_batch_size", "max_enqueued_batches"):
        # TF Serving turns max_enqueued_batches 0 into 1 (without large-batch splitting)
        least = 0 if name == "max_enqueued_batches" else 1
        if msg.HasField(name) and getattr(msg, name).value < least:
            raise ConfigError(f"{source}: {name} must be >= {least}: fix the value in the file")
    return msg


def _parse_text_proto(text: str, msg: Any, source: str, kind: str) -> Any:
    """Parse into ``msg``; a ConfigError names the file and how to fix it."""
    from google.protobuf import text_format

    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as e:
        raise ConfigError(
            f"{source}: not a tensorflow.serving.{kind} text proto ({e}): "
            "fix the file or regenerate it with `python -m builder config`"
        ) from None
    return msg


def parse_monitoring_config(text: str, source: str = MONITORING_FILE) -> Any:
    """Parse a ``--monitoring_config_file``; the Prometheus path must be an absolute URL path."""
    msg = _parse_text_proto(text, monitoring_config_class()(), source, "MonitoringConfig")
    path = msg.prometheus_config.path
    if path and not path.startswith("/"):
        raise ConfigError(
            f"{source}: prometheus_config.path {path!r} must start with '/': "
            f"use e.g. {PROMETHEUS_PATH}"
        )
    return msg


def batching_parameters_text(
    batch_sizes: list[int] | tuple[int, ...],
    batch_timeout_micros: int = DEFAULT_BATCH_TIMEOUT_MICROS,
    num_batch_threads: int = DEFAULT_NUM_BATCH_THREADS,
    max_enqueued_batches: int = DEFAULT_MAX_ENQUEUED_BATCHES,
    pad_variable_length_inputs: bool = False,
) -> str:
    """The text of a ``batching_parameters.txt`` whose ``allowed_batch_sizes`` are exactly the
    sizes the artefacts were built and warmed for (max_batch_size = the largest)."""
    sizes = sorted({int(b) for b in batch_sizes})
    if not sizes:
        raise ConfigError(
            "no batch sizes to write into batching_parameters.txt: export with --batch_sizes "
            "(e.g. 1,8,100) or pass them explicitly"
        )
    if sizes[0] <= 0:
        raise ConfigError(f"batch sizes {sizes} must all be positive: use e.g. 1,8,100")
    for name, value in (
        ("batch_timeout_micros", batch_timeout_micros),
        ("num_batch_threads", num_batch_threads),
        ("max_enqueued_batches", max_enqueued_batches),
    ):
        if int(value) < (0 if name == "batch_timeout_micros" else 1):
            raise ConfigError(f"--{name} {value} is out of range: use a positive integer")
    lines = [
        "# Written by tfs-builder: pass with --enable_batching --batching_parameters_file=<this>.",
        "# allowed_batch_sizes are the sizes the artefacts were exported and warmed for; the",
        "# batcher pads each batch up to one of them, so no new input shape reaches the graph.",
        f"max_batch_size {{ value: {sizes[-1]} }}",
        f"batch_timeout_micros {{ value: {int(batch_timeout_micros)} }}",
        f"max_enqueued_batches {{ value: {int(max_enqueued_batches)} }}",
        f"num_batch_threads {{ value: {int(num_batch_threads)} }}",
    ]
    lines += [f"allowed_batch_sizes: {b}" for b in sizes]
    lines.append(f"pad_variable_length_inputs: {'true' if pad_variable_length_inputs else 'false'}")
    text = "\n".join(lines) + "\n"
    parse_batching_parameters(text, BATCHING_FILE)  # never write what the server would reject
    return text


def monitoring_config_text(path: str = PROMETHEUS_PATH) -> str:
    """The text of a ``monitoring.config`` that turns on TF Serving's Prometheus endpoint (served
    on the REST port)."""
    text = (
        "# Written by tfs-builder: pass with --monitoring_config_file=<this>; metrics are served\n"
        "# on the REST port (--rest_api_port) at the path below.\n"
        "prometheus_config {\n"
        "  enable: true\n"
        f"  path: {json.dumps(path)}\n"
        "}\n"
    )
    parse_monitoring_config(text, MONITORING_FILE)
    return text


def write_companions(
    out_dir: str | os.PathLike,
    batch_sizes: list[int] | tuple[int, ...],
    batch_timeout_micros: int = DEFAULT_BATCH_TIMEOUT_MICROS,
    num_batch_threads: int = DEFAULT_NUM_BATCH_THREADS,
    max_enqueued_batches: int = DEFAULT_MAX_ENQUEUED_BATCHES,
    prometheus_path: str = PROMETHEUS_PATH,
    tuned: TunedBatching | None = None,
) -> dict[str, Path]:
    """Write ``batching_parameters.txt`` and ``monitoring.config`` into ``out_dir``; with
    ``tuned`` (see ``find_tuned``) the batching file is the measured one, header included.

    Both texts are generated and parse-checked before either file is touched, and each is written
    atomically, so a bad argument leaves the directory exactly as it was.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file, not a directory: pass a directory for the companions")
    if tuned is not None:
        batching = tuned.text
    else:
        batching = batching_parameters_text(
            batch_sizes, batch_timeout_micros, num_batch_threads, max_enqueued_batches
        )
    monitoring = monitoring_config_text(prometheus_path)
    paths = {"batching": out / BATCHING_FILE, "monitoring": out / MONITORING_FILE}
    atomic_write_text(paths["batching"], batching)
    atomic_write_text(paths["monitoring"], monitoring)
    return paths


def batch_sizes_from_repo(repo: str | os.PathLike) -> list[int]:
    """Union of ``batch_sizes`` in every version's build_info.json: the sizes the repository's
    artefacts were warmed for (what ``allowed_batch_sizes`` must be)."""
    from builder.core import artifact
    from builder.core.layout import list_models, list_versions, version_dir

    sizes: set[int] = set()
    for name in list_models(repo):
        for v in list_versions(Path(repo) / name):
            vdir = version_dir(repo, name, v)
            info = artifact.read_build_info(vdir) or {}
            try:
                sizes.update(int(b) for b in info.get("batch_sizes", []))
            except (ValueError, TypeError) as e:
                raise InputError(
                    f"{vdir / artifact.BUILD_INFO_FILE}: bad batch_sizes ({e}): re-export this version"
                ) from None
    return sorted(sizes)


# ---------------------------------------------------------------------------------------------
# Tuned batching parameters (written by `python -m builder tune` into REPO/.tune/NAME/)

TUNE_DIR = ".tune"  # hidden: list_models and TF Serving (which only reads base paths) skip it


@dataclass(frozen=True)
class TunedBatching:
    """A batching_parameters.txt measured by ``tune`` for one model of the repository."""

    path: Path
    model: str
    version: int | None  # the version it was measured on
    text: str
    note: str  # what `config` prints: where the file comes from, and whether it is stale


def find_tuned(repo: str | os.PathLike, model_names: list[str]) -> TunedBatching | None:
    """The tuned batching file of a model in ``model_names`` (None if no model was tuned).

    TF Serving takes one ``--batching_parameters_file`` for the whole server, so only one tuned
    file can be used: with several, the most recently tuned one wins and the note says which were
    left out. A tuned file that no longer parses is an error naming it (never silently dropped),
    and one measured on another version than the latest on disk is used with a warning."""
    from builder.core.layout import list_versions

    found = [(Path(repo) / TUNE_DIR / n / BATCHING_FILE, n) for n in model_names]
    found = [(p, n) for p, n in found if p.is_file()]
    if not found:
        return None
    found.sort(key=lambda pn: pn[0].stat().st_mtime, reverse=True)
    path, name = found[0]
    text = path.read_text(encoding="utf-8")
    parse_batching_parameters(text, str(path))
    report = _read_tune_report(path.parent / "tune_report.json")
    version = (report.get("model") or {}).get("version")
    cpu_info = (report.get("machine") or {}).get("cpu") or {}
    arch = cpu_info.get("microarchitecture")
    cpu = f"{cpu_info.get('model_name', 'an unrecorded CPU')}" + (f" ({arch})" if arch else "")
    note = (f"{BATCHING_FILE}: using the parameters `tune` measured for {name} version {version} on {cpu} "
            f"({path}; delete it to go back to defaults)")
    latest = list_versions(Path(repo) / name)
    if version is not None and latest and latest[-1] != version:
        note += f"; warning: the latest version is {latest[-1]}, re-run `python -m builder tune --name {name}`"
    if len(found) > 1:
        note += f"; one file serves all models, so the tuned files of {', '.join(n for _, n in found[1:])} are not used"
    return TunedBatching(path, name, version, text, note)


def _read_tune_report(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# ---------------------------------------------------------------------------------------------
# Latency budgets (serving_configs/latency_budget.json)


@dataclass(frozen=True)
class Budget:
    """Latency budget for one backend/model/batch size, in milliseconds."""

    p50_ms: float
    p99_ms: float


@dataclass(frozen=True)
class LatencyBudget:
    """A parsed budget file. ``cold_start_seconds``: start -> every version AVAILABLE."""

    source: str
    data: dict

    def cold_start_seconds(self, backend: str) -> float:
        return float(self._backend(backend)["cold_start_seconds"])

    def warm(self, backend: str, model: str, batch_size: int) -> Budget | None:
        """The budget for one batch size, falling back to the model ``"*"``; None if the file has
        no entry for that batch size (the caller reports it as unbudgeted)."""
        models = self._backend(backend).get("models", {})
        entry = models.get(model, models.get("*", {})).get(str(int(batch_size)))
        if entry is None:
            return None
        return Budget(float(entry["p50_ms"]), float(entry["p99_ms"]))

    def _backend(self, backend: str) -> dict:
        try:
            return self.data["backends"][backend]
        except KeyError:
            raise ConfigError(
                f"{self.source}: no budget for backend {backend!r}: add it under \"backends\""
            ) from None


def load_latency_budget(path: str | os.PathLike) -> LatencyBudget:
    """Read and validate a latency budget file; every number must be positive and p50 <= p99."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{p}: latency budget file not found: pass an existing file") from None
    except ValueError as e:
        raise ConfigError(f"{p}: not valid JSON ({e}): fix the file") from None
    backends = data.get("backends") if isinstance(data, dict) else None
    if not isinstance(backends, dict) or not backends:
        raise ConfigError(f"{p}: needs a non-empty \"backends\" object: see serving_configs/README.md")
    for bname, b in backends.items():
        where = f"{p}: backends.{bname}"
        cold = b.get("cold_start_seconds") if isinstance(b, dict) else None
        if not isinstance(cold, (int, float)) or not math.isfinite(cold) or cold <= 0:
            raise ConfigError(f"{where}.cold_start_seconds must be a positive number")
        for mname, sizes in b.get("models", {}).items():
            for bs, entry in sizes.items():
                w = f"{where}.models.{mname}.{bs}"
                if not str(bs).isdigit() or int(bs) <= 0:
                    raise ConfigError(f"{w}: batch size keys must be positive integers")
                try:
                    p50, p99 = float(entry["p50_ms"]), float(entry["p99_ms"])
                except (KeyError, TypeError, ValueError):
                    raise ConfigError(f"{w}: needs numeric p50_ms and p99_ms") from None
                if not (0 < p50 <= p99):
                    raise ConfigError(f"{w}: needs 0 < p50_ms <= p99_ms (got {p50}, {p99})")
    return LatencyBudget(str(p), data)
